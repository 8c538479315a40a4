"""One optimizer for every parameter: NorMuon for the matrix banks, Adam for the rest.

Configuration is per parameter (PARAM_TABLE), not per group: the model has a handful of
parameters (banks), each with its own update rule and communication pattern.

One step, top to bottom:
  1. tie:    lm_head.grad += embed.grad.T      (embed follows lm_head; it is never sent)
  2. issue:  every gradient's collective, async, in PARAM_TABLE order
             sharded    -> reduce_scatter (AVG): each rank gets 1/world_size of the rows
             replicated -> all_reduce (AVG)
  3. work:   in WORK_ORDERS[config.work_order]: wait that parameter's collective, update the
             local shard, then issue an async all_gather of the updated shard into the full
             parameter. "embed" in the work order is the tie copy embed <- lm_head.T, which
             waits only for lm_head's all_gather, so it runs while later gathers are in flight.
  4. wait:   every all_gather.

Every collective, update and tie copy runs under a torch.profiler.record_function label
("comm:reduce_scatter:mlp", "optim:normuon:mlp", "tie:lm_head->embed", ...), so traces say
which parameter a kernel belongs to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.profiler import record_function

from trainer import kernels
from trainer.config import Config
from trainer.errors import TrainerError

MAX_VALUE_EMBEDS = 16
VALUE_EMBEDS = [f"ve{i}" for i in range(MAX_VALUE_EMBEDS)]
TIE_LEADER, TIE_FOLLOWER = "lm_head", "embed"

_MUON = {"optim": "normuon", "comms": "sharded", "adam_betas": None}
# Dict order is the order in which the gradients' collectives are issued.
PARAM_TABLE: dict[str, dict[str, Any]] = {
    # split_rows: each (rows, cols) slice of the bank holds that many matrices stacked by rows
    # (the QKVO bank: four (d, d) matrices per layer), orthogonalised one by one.
    "attn": {**_MUON, "split_rows": 4},
    "mlp": {**_MUON, "split_rows": 1},
    "scalars": {"optim": "adam", "comms": "replicated", "adam_betas": (0.9, 0.99)},
    **{ve: {"optim": "adam", "comms": "sharded", "adam_betas": (0.75, 0.95)}
       for ve in VALUE_EMBEDS},
    "lm_head": {"optim": "adam", "comms": "sharded", "adam_betas": (0.5, 0.95)},
    # Tied: embed's gradient is added into lm_head's and embed is copied from lm_head after
    # its update. Its entry applies only when lm_head is absent.
    "embed": {"optim": "adam", "comms": "sharded", "adam_betas": (0.5, 0.95)},
}

WORK_ORDERS: dict[str, list[str]] = {
    # Small, fast parameters first while the big reduce-scatters finish; the tie copy last,
    # beside the big all_gathers.
    "small-first": ["scalars", *VALUE_EMBEDS, "lm_head", "attn", "mlp", "embed"],
    # Wait for the big reduce-scatters and run polar express before any small parameter's
    # all_gather is issued. At the small preset the later reduce-scatters still cover most of
    # the orthogonalisation, so the gaps it opens are small and vary from run to run.
    "big-first": ["attn", "mlp", "lm_head", "scalars", *VALUE_EMBEDS, "embed"],
    # The reverse of the issue order: the first update waits for the reduce-scatter issued
    # last, so no update overlaps a reduction, and each all_gather then waits for its update
    # with nothing else queued: communication and optimizer math run one after the other.
    # The tie copy stays last, as in the other orders.
    "last-first": ["lm_head", *reversed(VALUE_EMBEDS), "scalars", "mlp", "attn", "embed"],
}

NORMUON_BETA2 = 0.95
ADAM_EPS = 1e-8

# Polar Express (Amsel et al. 2025, arXiv:2505.16932) coefficients for 5 steps, as used in
# modded-nanogpt: each step maps singular values s -> a s + b s^3 + c s^5, pushing them to 1.
POLAR_EXPRESS_COEFFS: list[tuple[float, float, float]] = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def at_least_float32(t: Tensor) -> Tensor:
    """Optimizer math runs in float32, or in float64 when the parameters are (exactness tests)."""
    return t if t.dtype == torch.float64 else t.float()


def polar_express(G: Tensor, steps: int = 5) -> Tensor:
    """Approximately orthogonalise each matrix of G (..., r, c): U S V^T -> U V^T.

    bfloat16 on CUDA, float32 (or float64, for tests) elsewhere. Tall matrices iterate on
    the small c x c Gram matrix X^T X (X <- aX + X(bA + cA^2)); wide and square ones on
    X X^T (X <- aX + (bA + cA^2)X). Both give the same result; the tall form avoids transposing
    the momentum, which would make the elementwise Nesterov step strided and slow.
    Each iteration is three matmul launches (the scalings ride in baddbmm's alpha/beta): under
    the profiler the CPU dispatching this loop was what kept the next all_gather waiting.
    """
    X = G.bfloat16() if G.is_cuda else at_least_float32(G)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    X = X.reshape(-1, *X.shape[-2:])  # baddbmm wants one batch dimension
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X.mT @ X if tall else X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # bA + cA^2
        X = torch.baddbmm(X, X, B, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
    return X.reshape(G.shape)


def normuon_normalize(update: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """NorMuon: divide each row (each column for wide matrices) of the orthogonalised update
    by the running RMS of that row, then rescale each matrix back to its Frobenius norm.

    Orthogonalisation equalises singular values but not rows; neurons whose rows keep large
    updates step after step get damped, like Adam's second moment but per row.
    """
    reduce_dim = -1 if update.size(-2) >= update.size(-1) else -2
    u = at_least_float32(update)
    second_moment.lerp_(u.square().mean(dim=reduce_dim, keepdim=True), 1 - beta2)
    scaled = u * second_moment.clamp_min(1e-10).rsqrt()
    norm_ratio = u.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True)
    return scaled * norm_ratio.nan_to_num(0.0)


def normuon_direction(grad: Tensor, momentum: Tensor, second_moment: Tensor,
                      momentum_beta: float) -> Tensor:
    """Nesterov momentum, polar express and NorMuon's row normalisation: the update direction.

    Eager on purpose: compiled, its generated launcher cost more CPU time under the profiler
    (H200 x2, small preset: profiled steps 25 ms against 18 ms eager) for the same unprofiled
    step time, and the next all_gather waited on the CPU.
    """
    grad = at_least_float32(grad)
    momentum.lerp_(grad, 1 - momentum_beta)
    update = grad.lerp(momentum, momentum_beta)  # Nesterov
    update = polar_express(update)
    return normuon_normalize(update, second_moment, NORMUON_BETA2)


@dataclass
class Pending:
    """An issued collective; wait() returns what it produced (the averaged local shard)."""

    work: Any  # torch.distributed Work, or None when nothing was sent
    finish: Callable[[], Tensor]

    def wait(self) -> Tensor:
        if self.work is not None:
            self.work.wait()
        return self.finish()


@dataclass
class Slot:
    """One parameter as the optimizer sees it: its full view and this rank's shard of it."""

    name: str
    param: torch.nn.Parameter
    spec: dict[str, Any]
    full: Tensor  # param.data as (N, ...) rows to shard: matrices for NorMuon, rows for Adam
    shard: Tensor  # this rank's rows of `full` (all of them when replicated or alone)
    state: dict[str, Tensor] = field(default_factory=dict)


def shard_units(shape: tuple[int, ...], spec: dict[str, Any]) -> int:
    """How many rows (Adam) or matrices (NorMuon) of a parameter of this shape are split over
    the ranks: the leading size of the optimizer's `full` view (see NorMuonAdam._make_slot)."""
    if spec["optim"] == "normuon":
        rows, cols = shape[-2] // spec.get("split_rows", 1), shape[-1]
        return math.prod(shape) // (rows * cols)
    return shape[0]


def check_divides(name: str, units: int, world_size: int) -> None:
    if units % world_size:
        raise TrainerError(f"{name}: {units} rows/matrices do not shard evenly over {world_size} "
                        "ranks; choose a number of processes that divides them")


def check_even_sharding(shapes: dict[str, tuple[int, ...]], world_size: int,
                        table: dict[str, dict[str, Any]] | None = None) -> None:
    """Refuse, before any rank starts, a world size that some sharded parameter cannot be split
    over (each rank would otherwise fail alone, inside torchrun). embed follows lm_head when
    both exist and is never sharded itself."""
    table = PARAM_TABLE if table is None else table
    tied = TIE_LEADER in shapes and TIE_FOLLOWER in shapes
    for name, shape in shapes.items():
        if table[name]["comms"] == "sharded" and not (tied and name == TIE_FOLLOWER):
            check_divides(name, shard_units(shape, table[name]), world_size)


def _all_gather(output: Tensor, shard: Tensor) -> Any:
    # all_gather_single is the new name (torch >= 2.13); same arguments.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(output, shard, async_op=True)


def _reduce_scatter(output: Tensor, full: Tensor) -> Any:
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return scatter(output, full, op=dist.ReduceOp.AVG, async_op=True)


class NorMuonAdam:
    """NorMuon (Nesterov + polar express + per-row normalisation) and Adam, sharded by rank."""

    def __init__(self, params: dict[str, torch.nn.Parameter], config: Config, rank: int = 0,
                 world_size: int = 1, table: dict[str, dict[str, Any]] | None = None) -> None:
        table = PARAM_TABLE if table is None else table
        unknown = sorted(set(params) - set(table))
        if unknown:
            raise TrainerError(f"no optimizer table entry for parameters {unknown}")
        self.config = config
        self.distributed = dist.is_available() and dist.is_initialized() and world_size > 1
        self.rank = rank if self.distributed else 0
        self.world_size = world_size if self.distributed else 1
        # Gloo has no AVG on every torch version; sum and divide instead (same math).
        self.gloo = self.distributed and dist.get_backend() == "gloo"
        self.tied = TIE_LEADER in params and TIE_FOLLOWER in params
        self.lr_scale = 1.0
        self.step_count = 0

        self.issue_order = [n for n in table if n in params and not self._follows(n)]
        self.work_order = [n for n in WORK_ORDERS[config.work_order] if n in params]
        never_updated = sorted(set(params) - set(self.work_order))
        if never_updated:
            raise TrainerError(f"parameters {never_updated} are missing from work order "
                            f"{config.work_order!r}")
        if self.tied and (self.work_order.index(TIE_LEADER)
                          > self.work_order.index(TIE_FOLLOWER)):
            raise TrainerError("work order must update lm_head before the embed tie copy")
        self.slots = {name: self._make_slot(name, params[name], table[name])
                      for name in self.issue_order}
        self.params = params

    def _follows(self, name: str) -> bool:
        return self.tied and name == TIE_FOLLOWER

    def _make_slot(self, name: str, param: torch.nn.Parameter, spec: dict[str, Any]) -> Slot:
        data = param.data
        if spec["optim"] == "normuon":
            rows, cols = data.shape[-2] // spec.get("split_rows", 1), data.shape[-1]
            full = data.view(-1, rows, cols)
        else:
            full = data.view(data.shape[0], -1) if data.dim() > 1 else data
        shard = full
        if spec["comms"] == "sharded" and self.world_size > 1:
            check_divides(name, full.shape[0], self.world_size)
            per_rank = full.shape[0] // self.world_size
            shard = full[self.rank * per_rank: (self.rank + 1) * per_rank]
        slot = Slot(name, param, spec, full, shard)
        if spec["optim"] == "normuon":
            reduce_dim = -1 if shard.size(-2) >= shard.size(-1) else -2
            slot.state["momentum"] = torch.zeros_like(at_least_float32(shard))
            slot.state["second_moment"] = torch.zeros_like(
                at_least_float32(shard).mean(dim=reduce_dim, keepdim=True))
        else:
            slot.state["exp_avg"] = torch.zeros_like(at_least_float32(shard))
            slot.state["exp_avg_sq"] = torch.zeros_like(at_least_float32(shard))
        return slot

    def set_lr_scale(self, scale: float) -> None:
        """Multiply every learning rate by `scale` (the training loop's schedule)."""
        self.lr_scale = scale

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        with record_function("optimizer.step"):
            self.step_count += 1
            if self.tied:
                self._combine_tied_grads()
            reductions = {name: self._issue_reduce(name) for name in self.issue_order}
            gathers: dict[str, Pending] = {}
            for name in self.work_order:
                if self._follows(name):
                    self._tie_copy(gathers.pop(TIE_LEADER, None))
                    continue
                slot = self.slots[name]
                with record_function(f"optim:{slot.spec['optim']}:{name}"):
                    grad = reductions[name].wait()
                    if slot.spec["optim"] == "normuon":
                        self._normuon_update(slot, grad)
                    else:
                        self._adam_update(slot, grad)
                gathers[name] = self._issue_gather(slot)
            for name, pending in gathers.items():
                if pending.work is not None:  # only real all_gathers get a comm label
                    with record_function(f"comm:wait:all_gather:{name}"):
                        pending.wait()

    # -- tie ------------------------------------------------------------------------------

    def _combine_tied_grads(self) -> None:
        """lm_head.grad += embed.grad.T: the tied pair is communicated and updated once."""
        head, embed = self.params[TIE_LEADER], self.params[TIE_FOLLOWER]
        if embed.grad is None:
            return
        if head.grad is None:
            head.grad = torch.zeros_like(head)
        with record_function("tie:embed->lm_head_grad"):
            if self.config.tie_copy == "triton":
                kernels.transpose_add(head.grad, embed.grad)
            else:
                head.grad.add_(embed.grad.T)  # strided elementwise over every SM

    def _tie_copy(self, head_gather: Pending | None) -> None:
        """embed <- lm_head.T once lm_head's update has been gathered."""
        head, embed = self.params[TIE_LEADER], self.params[TIE_FOLLOWER]
        with record_function("tie:lm_head->embed"):
            if head_gather is not None:
                head_gather.wait()
            if self.config.tie_copy == "triton":
                kernels.transpose_copy(embed.data, head.data)
            else:
                embed.data.copy_(head.data.T)  # strided elementwise over every SM

    # -- communication --------------------------------------------------------------------

    def _issue_reduce(self, name: str) -> Pending:
        """Start averaging this parameter's gradient over ranks; Pending yields its shard."""
        slot = self.slots[name]
        grad = slot.param.grad
        if grad is None:
            grad = torch.zeros_like(slot.param)
        full = grad.view(slot.full.shape)
        if not self.distributed:
            return Pending(None, lambda: full)
        sharded = slot.spec["comms"] == "sharded"
        label = "reduce_scatter" if sharded else "all_reduce"
        with record_function(f"comm:{label}:{name}"):
            if self.gloo:  # all_reduce(SUM) then keep our rows: reduce_scatter's result
                work = dist.all_reduce(full, op=dist.ReduceOp.SUM, async_op=True)
                rows = slice(self.rank * slot.shard.shape[0],
                             (self.rank + 1) * slot.shard.shape[0]) if sharded else slice(None)
                return Pending(work, lambda: full[rows].div_(self.world_size))
            if sharded:
                out = torch.empty_like(slot.shard, dtype=grad.dtype)
                return Pending(_reduce_scatter(out, full), lambda: out)
            work = dist.all_reduce(full, op=dist.ReduceOp.AVG, async_op=True)
            return Pending(work, lambda: full)

    def _issue_gather(self, slot: Slot) -> Pending:
        """Start sending this rank's updated shard to every rank (in place into the param)."""
        if not self.distributed or slot.spec["comms"] != "sharded":
            return Pending(None, lambda: slot.full)
        with record_function(f"comm:all_gather:{slot.name}"):
            return Pending(_all_gather(slot.full, slot.shard), lambda: slot.full)

    # -- updates --------------------------------------------------------------------------

    def _normuon_update(self, slot: Slot, grad: Tensor) -> None:
        cfg = self.config
        update = normuon_direction(grad, slot.state["momentum"], slot.state["second_moment"],
                                   cfg.muon_momentum)
        rows, cols = slot.shard.shape[-2:]
        lr = cfg.muon_lr * self.lr_scale * max(1.0, rows / cols) ** 0.5
        if cfg.weight_decay:
            slot.shard.mul_(1 - lr * cfg.weight_decay)
        slot.shard.add_(update.to(slot.shard.dtype), alpha=-lr)

    def _adam_update(self, slot: Slot, grad: Tensor) -> None:
        beta1, beta2 = slot.spec["adam_betas"]
        exp_avg, exp_avg_sq = slot.state["exp_avg"], slot.state["exp_avg_sq"]
        grad = at_least_float32(grad)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = self.step_count
        lr = self.config.adam_lr * self.lr_scale
        denom = (exp_avg_sq / (1 - beta2**t)).sqrt_().add_(ADAM_EPS)  # bias-corrected
        if self.config.weight_decay and slot.shard.dim() > 1:
            slot.shard.mul_(1 - lr * self.config.weight_decay)
        slot.shard.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))
