"""Triton transpose-copy and transpose-add kernels for the tied LM head and embedding.

The LM head is stored transposed, (d, vocab), and the embedding as (vocab, d), so keeping
them tied takes a transposed copy after every update and a transposed add of the gradients
before communication. Eager PyTorch does these as strided elementwise kernels whose grid
covers every SM many times over; run beside an NCCL collective they starve it of SMs.
These kernels move the data in square tiles (coalesced on both sides) from a bounded,
persistent grid, so NCCL keeps SMs to run on.

Without Triton or CUDA (and outside TRITON_INTERPRET=1) the torch fallbacks are used.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: CPU-only installs and macOS have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

# Tiles are square so the load (rows of src) and the store (rows of dst) are both coalesced.
# Measured on an H200 (scripts/gpu_check_kernels.py, (768, 50304) fp32): 128x128 tiles with 8
# warps on 66 programs copy in 197 us against 266 us for 64x64/4 warps and 298 us for the eager
# strided copy, which fills every SM (1143 blocks/SM).
BLOCK = 128
NUM_WARPS = 8
# The kernels use half the SMs at most, so the rest stay free for NCCL's channels.
SM_FRACTION = 0.5


def interpreter_mode() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """True when the Triton kernels can run: Triton is installed and there is a CUDA GPU
    or the interpreter is on."""
    return triton is not None and (torch.cuda.is_available() or interpreter_mode())


if triton is not None:

    @triton.jit
    def _transpose_tiles(dst_ptr, src_ptr, M, N, stride_dm, stride_dn, stride_sn, stride_sm,
                         ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        """dst[m, n] (+)= src[n, m] for dst (M, N); each program walks tiles grid-strided."""
        pid = tl.program_id(0)
        num_programs = tl.num_programs(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        for tile in range(pid, tiles_m * tiles_n, num_programs):
            # Neighbouring programs take neighbouring tiles along N, the contiguous dst axis.
            offs_m = ((tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = ((tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
            src = tl.load(src_ptr + offs_n[None, :] * stride_sn + offs_m[:, None] * stride_sm,
                          mask=mask)
            dst_ptrs = dst_ptr + offs_m[:, None] * stride_dm + offs_n[None, :] * stride_dn
            if ACCUMULATE:
                total = tl.load(dst_ptrs, mask=mask).to(tl.float32) + src.to(tl.float32)
                tl.store(dst_ptrs, total.to(dst_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(dst_ptrs, src.to(dst_ptr.dtype.element_ty), mask=mask)

    # Two named kernels (not one with a flag) so traces show which one ran.
    @triton.jit
    def transpose_copy_kernel(dst_ptr, src_ptr, M, N, stride_dm, stride_dn, stride_sn,
                              stride_sm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        _transpose_tiles(dst_ptr, src_ptr, M, N, stride_dm, stride_dn, stride_sn, stride_sm,
                         False, BLOCK_M, BLOCK_N)

    @triton.jit
    def transpose_add_kernel(dst_ptr, src_ptr, M, N, stride_dm, stride_dn, stride_sn,
                             stride_sm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        _transpose_tiles(dst_ptr, src_ptr, M, N, stride_dm, stride_dn, stride_sn, stride_sm,
                         True, BLOCK_M, BLOCK_N)


def max_programs(device: torch.device) -> int:
    """The bounded grid size: a fraction of the SMs on CUDA, a handful in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, int(sms * SM_FRACTION))
    return 4


def _check_shapes(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.dim() != 2 or src.dim() != 2 or dst.shape != (src.shape[1], src.shape[0]):
        raise ValueError(f"need dst (M, N) and src (N, M), got {tuple(dst.shape)} and "
                         f"{tuple(src.shape)}")
    if dst.device != src.device:
        raise ValueError(f"dst on {dst.device} but src on {src.device}")


def _use_triton(dst: torch.Tensor) -> bool:
    if triton is None:
        return False
    return dst.is_cuda or (interpreter_mode() and dst.device.type == "cpu")


def _launch(kernel, dst: torch.Tensor, src: torch.Tensor, programs: int | None, block: int,
            num_warps: int) -> None:
    M, N = dst.shape
    tiles = triton.cdiv(M, block) * triton.cdiv(N, block)
    grid = (max(1, min(tiles, programs or max_programs(dst.device))),)
    kernel[grid](dst, src, M, N, dst.stride(0), dst.stride(1), src.stride(0), src.stride(1),
                 BLOCK_M=block, BLOCK_N=block, num_warps=num_warps)


@torch.no_grad()
def transpose_copy(dst: torch.Tensor, src: torch.Tensor, programs: int | None = None,
                   block: int = BLOCK, num_warps: int = NUM_WARPS) -> None:
    """dst[i, j] = src[j, i], in place. `programs`, `block` and `num_warps` override the
    bounded grid size, the square tile's side and the warps per program (for tuning)."""
    _check_shapes(dst, src)
    if _use_triton(dst):
        _launch(transpose_copy_kernel, dst, src, programs, block, num_warps)
    else:
        dst.copy_(src.T)


@torch.no_grad()
def transpose_add(dst: torch.Tensor, src: torch.Tensor, programs: int | None = None,
                  block: int = BLOCK, num_warps: int = NUM_WARPS) -> None:
    """dst += src.T, in place (accumulated in float32); overrides as for transpose_copy."""
    _check_shapes(dst, src)
    if _use_triton(dst):
        _launch(transpose_add_kernel, dst, src, programs, block, num_warps)
    else:
        dst.add_(src.T)
