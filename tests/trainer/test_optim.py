"""NorMuonAdam: polar express, NorMuon normalisation, the hand-tied LM head, and that sharding
over a 2-process gloo group computes the same update as doing it all on one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.config import Config, make_config
from trainer.errors import TrainerError as UserError
from trainer.model import GPT, param_shapes
from trainer.optim import (
    PARAM_TABLE,
    WORK_ORDERS,
    NorMuonAdam,
    check_even_sharding,
    normuon_normalize,
    polar_express,
)

STEPS = 3
GLOBAL_BATCH = 4


def _with_singular_values(rows: int, cols: int, smallest: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _, vh = torch.linalg.svd(torch.randn(rows, cols, generator=gen), full_matrices=False)
    return (u * torch.logspace(0, torch.log10(torch.tensor(smallest)), min(rows, cols))) @ vh


@pytest.mark.parametrize("shape", [(96, 32), (256, 64), (48, 47)])
def test_polar_express_tall_form_equals_wide_form_transposed(shape: tuple[int, int]) -> None:
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    tall = polar_express(x)
    wide = polar_express(x.mT.contiguous()).mT
    torch.testing.assert_close(tall, wide, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (64, 64)])
def test_polar_express_output_is_near_orthogonal(shape: tuple[int, int]) -> None:
    x = _with_singular_values(*shape, smallest=1e-2, seed=1)
    singular = torch.linalg.svdvals(polar_express(x))
    assert singular.min() > 0.8 and singular.max() < 1.2, singular


def test_normuon_normalize_equalises_rows_and_keeps_norm() -> None:
    gen = torch.Generator().manual_seed(2)
    update = torch.randn(2, 64, 16, generator=gen) * torch.logspace(-2, 1, 64)[None, :, None]
    second_moment = torch.zeros(2, 64, 1)
    out = normuon_normalize(update, second_moment, beta2=0.95)
    row_rms = out.square().mean(dim=-1).sqrt()
    torch.testing.assert_close(row_rms, row_rms[:, :1].expand_as(row_rms))
    torch.testing.assert_close(out.norm(dim=(-2, -1)), update.norm(dim=(-2, -1)))
    assert second_moment.abs().sum() > 0


def _data(cfg: Config) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, cfg.vocab_size, (STEPS, GLOBAL_BATCH, 33), generator=gen)


def _train(cfg: Config, rank: int, world_size: int, table: dict[str, dict[str, Any]] | None = None,
           dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """STEPS optimizer steps; each rank takes its rows of the same global batch.

    Comparisons across world sizes run in float64: in float32, Adam's first steps turn
    rounding-level gradients (mathematically zero) into full-size updates of either sign.
    """
    model = GPT(cfg, world_size=world_size).to(dtype)
    opt = NorMuonAdam(model.param_table(), cfg, rank=rank, world_size=world_size, table=table)
    per_rank = GLOBAL_BATCH // world_size
    for batch in _data(cfg):
        rows = batch[rank * per_rank: (rank + 1) * per_rank]
        model(rows[:, :-1], rows[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return {name: p.detach().clone() for name, p in model.param_table().items()}


def _replicated_table() -> dict[str, dict[str, Any]]:
    return {name: {**spec, "comms": "replicated"} for name, spec in PARAM_TABLE.items()}


SETTINGS: dict[str, dict[str, Any]] = {
    "sharded": dict(tie_copy="eager", work_order="small-first"),
    "replicated": dict(tie_copy="eager", work_order="small-first"),
    "sharded_big_first_triton": dict(tie_copy="triton", work_order="big-first"),
    "sharded_last_first_triton": dict(tie_copy="triton", work_order="last-first"),
}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks on a small CPU
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        for setting, switches in SETTINGS.items():
            cfg = make_config("tiny", **switches)
            table = _replicated_table() if setting == "replicated" else None
            params = _train(cfg, rank, world_size, table, dtype=torch.float64)
            torch.save(params, os.path.join(out_dir, f"{setting}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    return out_dir


def _load(out_dir: Path, setting: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / f"{setting}_rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_agree_and_keep_the_tie(two_rank_results: Path) -> None:
    for setting in SETTINGS:
        rank0, rank1 = _load(two_rank_results, setting, 0), _load(two_rank_results, setting, 1)
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (setting, name)
        assert torch.equal(rank0["embed"], rank0["lm_head"].T), setting


@pytest.mark.slow
def test_sharded_equals_replicated(two_rank_results: Path) -> None:
    sharded = _load(two_rank_results, "sharded", 0)
    replicated = _load(two_rank_results, "replicated", 0)
    for name in sharded:
        torch.testing.assert_close(sharded[name], replicated[name], rtol=1e-5, atol=1e-6,
                                   msg=name)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_on_the_same_global_batch(two_rank_results: Path) -> None:
    single = _train(make_config("tiny"), rank=0, world_size=1, dtype=torch.float64)
    initial = GPT(make_config("tiny")).to(torch.float64).param_table()
    for setting in ("sharded", "sharded_big_first_triton", "sharded_last_first_triton"):
        two = _load(two_rank_results, setting, 0)
        for name, value in single.items():
            assert not torch.equal(value, initial[name]), name  # it trained
            torch.testing.assert_close(two[name], value, rtol=1e-9, atol=1e-10,
                                       msg=f"{setting}:{name}")


@pytest.mark.parametrize("tie_copy", ["triton", "eager"])
def test_tie_stays_exact(tie_copy: str) -> None:
    params = _train(make_config("tiny", tie_copy=tie_copy), rank=0, world_size=1)
    assert torch.equal(params["embed"], params["lm_head"].T)


@pytest.mark.parametrize("order", ["big-first", "last-first"])
def test_work_orders_give_the_same_result_alone(order: str) -> None:
    small = _train(make_config("tiny", work_order="small-first"), rank=0, world_size=1)
    other = _train(make_config("tiny", work_order=order), rank=0, world_size=1)
    for name in small:
        assert torch.equal(small[name], other[name]), name


def test_work_orders_cover_the_table() -> None:
    for order in WORK_ORDERS.values():
        assert sorted(order) == sorted(PARAM_TABLE)
        assert order.index("lm_head") < order.index("embed")
    assert list(PARAM_TABLE)[:2] == ["attn", "mlp"]


def test_lr_scale_zero_freezes_parameters() -> None:
    cfg = make_config("tiny")
    model = GPT(cfg)
    before = {n: p.detach().clone() for n, p in model.param_table().items()}
    opt = NorMuonAdam(model.param_table(), cfg)
    opt.set_lr_scale(0.0)
    data = _data(cfg)[0]
    model(data[:, :-1], data[:, 1:]).backward()
    opt.step()
    for name, p in model.param_table().items():
        assert torch.equal(p, before[name]), name


def test_unknown_parameter_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no optimizer table entry"):
        NorMuonAdam({"mystery": torch.nn.Parameter(torch.zeros(2))}, make_config("tiny"))


def test_loss_decreases_over_twenty_steps() -> None:
    cfg = make_config("tiny")
    model = GPT(cfg)
    opt = NorMuonAdam(model.param_table(), cfg)
    gen = torch.Generator().manual_seed(3)
    # A learnable stream: each token is the previous one plus one, modulo a small vocabulary.
    starts = torch.randint(0, 64, (cfg.batch_size, 1), generator=gen)
    tokens = (starts + torch.arange(65)) % 64
    losses = []
    for _ in range(20):
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_adamw(weight_decay: float) -> None:
    """Bias correction, eps placement, decoupled weight decay and the lr schedule scale: the
    Adam path must be torch.optim.AdamW with the table's betas."""
    cfg = make_config("tiny", weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(4)
    ours = torch.nn.Parameter(torch.randn(8, 5, generator=gen, dtype=torch.float64))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = NorMuonAdam({"ve0": ours}, cfg)
    ref_opt = torch.optim.AdamW([ref], lr=cfg.adam_lr, betas=PARAM_TABLE["ve0"]["adam_betas"],
                                eps=1e-8, weight_decay=weight_decay)
    for step in range(6):
        grad = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        scale = 1.0 - 0.15 * step
        opt.set_lr_scale(scale)
        ref_opt.param_groups[0]["lr"] = cfg.adam_lr * scale
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14, msg=f"step {step}")


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_sharding_check_matches_the_optimizer(world_size: int) -> None:
    """The launcher's up-front check (shapes only) refuses exactly the world sizes the
    optimizer itself would refuse on every rank."""
    cfg = make_config("tiny", num_layers=3, num_value_embeds=2)
    model = GPT(cfg, world_size=world_size)
    shapes = param_shapes(cfg, world_size)
    assert shapes == {n: tuple(p.shape) for n, p in model.param_table().items()}
    params = model.param_table()
    opt = NorMuonAdam(params, cfg)  # no process group: a world of one; then shard as rank 0
    opt.world_size = world_size
    expected = None
    try:
        for name in opt.issue_order:
            opt._make_slot(name, params[name], PARAM_TABLE[name])
    except UserError as err:
        expected = str(err)
    try:
        check_even_sharding(shapes, world_size)
        got = None
    except UserError as err:
        got = str(err)
    assert got == expected
    assert (got is None) == (world_size in (1, 2, 4))  # 12 attention matrices, d = 64
