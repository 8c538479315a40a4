"""Triton transpose kernels against torch, run by Triton's CPU interpreter.

TRITON_INTERPRET=1 must be set before Triton is imported, and other tests in this pytest
process may already have imported it, so the checks run in a fresh subprocess
(`python tests/trainer/test_kernels.py` runs them directly).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import kernels

REPO = Path(__file__).resolve().parents[2]
# Several shapes, including ones that are not multiples of the 64 x 64 tile and ones with
# more tiles than the bounded grid has programs.
SHAPES = [(1, 1), (64, 64), (65, 130), (100, 37), (3, 200), (257, 64)]


def check_kernels_match_torch() -> None:
    assert kernels.triton_available() and kernels._use_triton(torch.empty(1))
    gen = torch.Generator().manual_seed(0)
    for M, N in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            src = torch.randn(N, M, generator=gen).to(dtype)
            dst = torch.full((M, N), float("nan"), dtype=dtype)
            kernels.transpose_copy(dst, src)
            assert torch.equal(dst, src.T), (M, N, dtype)

            base = torch.randn(M, N, generator=gen).to(dtype)
            dst = base.clone()
            kernels.transpose_add(dst, src, programs=3)
            expected = (base.float() + src.T.float()).to(dtype)
            if dtype == torch.float32:
                assert torch.equal(dst, expected), (M, N)
            else:  # the interpreter's float32 -> bfloat16 cast truncates: one ulp off at most
                torch.testing.assert_close(dst, expected, rtol=2**-7, atol=0, msg=str((M, N)))
    # Other tile sizes (tuning knobs) and a one-program grid.
    src = torch.randn(70, 45, generator=gen)
    for block, warps, programs in ((32, 2, None), (128, 8, None), (64, 4, 1)):
        dst = torch.zeros(45, 70)
        kernels.transpose_copy(dst, src, programs, block, warps)
        assert torch.equal(dst, src.T), (block, warps, programs)
    # A strided source (a slice of a wider tensor) and destination.
    wide = torch.randn(40, 300, generator=gen)
    src = wide[:, 10:110]  # (40, 100), row stride 300
    dst = torch.zeros(100, 60)[:, 5:45]  # (100, 40), row stride 60
    kernels.transpose_copy(dst, src)
    assert torch.equal(dst, src.T)


def check_optimizer_tie_with_triton_kernels() -> None:
    """The optimizer's tie copy and grad combine through the real kernels keep embed exact."""
    from trainer.config import make_config
    from trainer.model import GPT
    from trainer.optim import NorMuonAdam

    results = {}
    for tie_copy in ("triton", "eager"):
        cfg = make_config("tiny", tie_copy=tie_copy)
        model = GPT(cfg)
        opt = NorMuonAdam(model.param_table(), cfg)
        data = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            model(data[:, :-1], data[:, 1:]).backward()
            opt.step()
            opt.zero_grad()
        assert torch.equal(model.embed, model.lm_head.T), tie_copy
        results[tie_copy] = model.lm_head.detach().clone()
    torch.testing.assert_close(results["triton"], results["eager"], rtol=1e-5, atol=1e-6)


def _run_interpreted(check: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, check], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok {check}" in proc.stdout


needs_triton = pytest.mark.skipif(kernels.triton is None, reason="triton not installed")


@needs_triton
def test_kernels_match_torch_under_interpreter() -> None:
    _run_interpreted("check_kernels_match_torch")


@needs_triton
def test_optimizer_tie_through_kernels_under_interpreter() -> None:
    _run_interpreted("check_optimizer_tie_with_triton_kernels")


def test_fallback_without_interpreter_and_shape_checks() -> None:
    if not kernels.interpreter_mode():
        assert not kernels._use_triton(torch.empty(2, 2))  # CPU tensor, no interpreter
    src = torch.randn(5, 3)
    dst = torch.zeros(3, 5)
    kernels.transpose_add(dst, src)
    assert torch.equal(dst, src.T)
    with pytest.raises(ValueError, match="need dst"):
        kernels.transpose_copy(torch.zeros(3, 4), src)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print(f"ok {sys.argv[1]}")
