"""Training configuration: model shapes per preset, and one switch per known pathology.

Every switch defaults to the fixed, fast way; `pathologies="all"` turns every known pathology on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from trainer.errors import TrainerError

BANK_ACCESS = ("unbind", "index")
TIE_COPY = ("triton", "eager")
WORK_ORDERS = ("small-first", "big-first", "last-first")


@dataclass(frozen=True)
class Config:
    preset: str = "tiny"
    # model
    vocab_size: int = 512
    num_layers: int = 2
    model_dim: int = 64
    num_heads: int = 2
    mlp_mult: int = 4
    num_value_embeds: int = 2
    logit_softcap: float = 15.0
    # data and schedule
    seq_len: int = 128
    batch_size: int = 4
    """Sequences per rank per step."""
    num_steps: int = 12
    seed: int = 1337
    # optimizer
    adam_lr: float = 0.008
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    weight_decay: float = 0.0
    # execution
    compile: bool = False
    # pathology switches (defaults are the fixed, fast way)
    bank_access: str = "unbind"
    tie_copy: str = "triton"
    work_order: str = "small-first"
    prefetch: bool = True
    loader_wait_step: int = 6
    """Without prefetch, the step at which the loader blocks on reading the full next shard."""
    extra: dict[str, Any] = field(default_factory=dict)

    def switches(self) -> dict[str, Any]:
        return {
            "bank_access": self.bank_access,
            "tie_copy": self.tie_copy,
            "work_order": self.work_order,
            "prefetch": self.prefetch,
            "loader_wait_step": self.loader_wait_step,
            "compile": self.compile,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads


PRESETS: dict[str, dict[str, Any]] = {
    # CPU: a few steps per second on two cores.
    "tiny": dict(vocab_size=512, num_layers=2, model_dim=64, num_heads=2, seq_len=128,
                 batch_size=4, num_steps=12, compile=False),
    # One GPU, fast, yet with the real vocabulary so the LM head/embedding tie is GPU-sized.
    # 32 sequences keep the GPU ahead of the CPU even while profiling with stacks (16 left the
    # profiled steps CPU-bound on an H200: 13.5 ms of kernels in 18-25 ms steps).
    "small": dict(vocab_size=50304, num_layers=4, model_dim=512, num_heads=4, seq_len=1024,
                  batch_size=32, num_steps=20, compile=True),
    # About 124M parameters: the speedrun's shapes.
    "speedrun": dict(vocab_size=50304, num_layers=12, model_dim=768, num_heads=6, seq_len=2048,
                     batch_size=24, num_steps=20, compile=True, num_value_embeds=3),
}

PATHOLOGIES_ALL: dict[str, Any] = dict(
    bank_access="index", tie_copy="eager", work_order="last-first", prefetch=False
)


def make_config(preset: str = "tiny", pathologies: str | None = None, **overrides: Any) -> Config:
    """Build a validated Config from a preset, an optional `pathologies="all"` and overrides.

    Overrides whose value is None are ignored, so CLI options can pass through unset.
    """
    if preset not in PRESETS:
        raise TrainerError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset], preset=preset)
    if pathologies is not None:
        if pathologies not in ("all", "none"):
            raise TrainerError(f"--pathologies takes 'all' or 'none', not {pathologies!r}")
        if pathologies == "all":
            values.update(PATHOLOGIES_ALL)
    known = {f.name for f in fields(Config)}
    for key, value in overrides.items():
        if key not in known:
            raise TrainerError(f"unknown config field {key!r}")
        if value is not None:
            values[key] = value
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    checks = [
        (config.bank_access in BANK_ACCESS, f"--bank-access must be one of {BANK_ACCESS}"),
        (config.tie_copy in TIE_COPY, f"--tie-copy must be one of {TIE_COPY}"),
        (config.work_order in WORK_ORDERS, f"--work-order must be one of {WORK_ORDERS}"),
        (config.model_dim % config.num_heads == 0, "model_dim must divide by num_heads"),
        (config.head_dim % 2 == 0, "head_dim must be even for rotary embeddings"),
        (config.num_steps >= 1, "num_steps must be at least 1"),
        (config.loader_wait_step >= 1, "--loader-wait-step must be at least 1"),
        (config.num_value_embeds <= config.num_layers, "more value embeddings than layers"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainerError(message)


def with_overrides(config: Config, **changes: Any) -> Config:
    new = replace(config, **changes)
    validate(new)
    return new
