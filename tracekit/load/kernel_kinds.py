"""What a GPU kernel is: its category (gemm, attention, elementwise, ...) and whether it is
communication. The one home for both questions.

A category is read from the kernel's own name (`tracekit.names.kernel_own_name`: the function's
name, no template arguments, no parameters): template arguments name types and helpers, not
what the kernel computes. An fbgemm embedding kernel whose arguments mention
`fbgemm_gpu::FixedDivisor` is not a GEMM, and `vectorized_elementwise_kernel<4,
fbgemm_gpu::_float_to_hfp8_gpu...>` is elementwise. Within the own name, the function's last
component decides (`fbgemm_gpu::permute_2D_lengths_kernel` is not a GEMM either); a bare
`kernel` keeps its namespace (`gemvx::kernel`).

Communication is recognised three ways, so that collectives not named "nccl" are seen:
- by name (`COMM_NAME`, namespaces included: DeepEP's kernels are `deep_ep::internode::
  dispatch`): NCCL and RCCL (`ncclDevKernel_*`, `ncclKernel_*`), MSCCL/MSCCL++, HCCL, NVSHMEM,
  DeepEP, TransformerEngine's userbuffers, and the custom all-reduce kernels of vLLM/SGLang
  (`cross_device_reduce_*`), TensorRT-LLM and torch's symmetric memory (`one_shot_all_reduce`,
  `multimem_all_reduce`, ...); Inductor's `triton_*` kernels are never communication (their
  names repeat the ops they fuse, `all_gather` copies included);
- by the collective's own fields (`Collective name` in the kernel's args);
- at link time (`comm_by_context`), by what launched it and where it ran: a kernel the name
  rules leave in "other" that was launched under a c10d op (`record_param_comms`,
  `c10d::allreduce_`, functional collectives, symmetric memory), or that runs on a stream
  where every other kernel is communication.

The kernels' column for it is still called `is_nccl` (every detector reads it); it means
"communication kernel", whatever library runs it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.names import kernel_own_name

COMM_NAME = re.compile(
    r"nccl|rccl|msccl|hccl|hcom_|nvshmem|deep_?ep|userbuffers|cross_device_reduce"
    r"|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|one_?shot_|two_?shot_|multimem_",
    re.IGNORECASE)
"""Communication libraries' and collectives' names, searched in a kernel's own name."""
COMM_OP = re.compile(
    r"^(record_param_comms$|c10d::|_?c10d_functional::|nccl:|symm_mem::|torch_symm_mem::)")
"""CPU ops that launch communication (c10d, functional collectives, symmetric memory)."""

KERNEL_CATEGORY_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"^(memcpy|memset)|\bmem(cpy|set)", re.IGNORECASE)),
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa", re.IGNORECASE)),
    (
        "gemm",
        re.compile(
            r"gemm|gemv|cutlass|cublas|xmma|nvjet|matmul|^Cijk_|_tem_fused_(add|b)?mm|scudnn"
            r"|fprop|dgrad|wgrad",
            re.IGNORECASE,
        ),
    ),
    ("triton", re.compile(r"^triton_")),
    (
        "reduction",
        re.compile(r"reduce|norm|softmax|sum_|_sum|\bsum\b|moments|welford|bn_fw|bn_bw|argmax"
                   r"|cross_entropy|scan", re.IGNORECASE),
    ),
    (
        "elementwise",
        re.compile(r"elementwise|vectorized|Functor|copy|fill|_apply_kernel|ToNhwc|ToNchw"
                   r"|transpose|permute|CatArray|index_|gather|scatter|where_kernel|embedding",
                   re.IGNORECASE),
    ),
)
"""First match wins, on the kernel's function name (see `category_name`); communication is
decided before these. Attention before gemm because fused attention kernels often say gemm
too."""


def category_name(name: str) -> str:
    """The part of a kernel's name its category is read from: the own name's last component
    (`fbgemm_gpu::permute_2D_lengths_kernel` -> `permute_2D_lengths_kernel`), or the last two
    when the last is a bare `kernel` (`gemvx::kernel`)."""
    parts = kernel_own_name(name).split("::")
    return "::".join(parts[-2:]) if parts[-1] == "kernel" and len(parts) > 1 else parts[-1]


def is_comm_name(name: str) -> bool:
    """True when the kernel's own name says it communicates (see COMM_NAME)."""
    own = kernel_own_name(name)
    return not own.startswith("triton_") and COMM_NAME.search(own) is not None


def kernel_category(name: str, is_comm: bool = False) -> str:
    """Kernel family from its own name (see KERNEL_CATEGORY_RULES); "nccl" for communication."""
    if is_comm or is_comm_name(name):
        return "nccl"
    function = category_name(name)
    for category, pattern in KERNEL_CATEGORY_RULES:
        if pattern.search(function):
            return category
    return "other"


def kinds(names: pd.Series, has_collective: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is communication, category) per kernel, each name's worked out once per distinct
    name: a kernel communicates when its name says so or it carries a collective's metadata
    (`has_collective`), and its category is then "nccl", else the name rules'."""
    if len(names) == 0:
        return np.zeros(0, dtype=bool), np.array([], dtype=object)
    codes, uniques = pd.factorize(names)
    by_name = [is_comm_name(str(u)) for u in uniques]
    categories = np.array([kernel_category(str(u), comm) for u, comm in zip(uniques, by_name,
                                                                             strict=True)],
                          dtype=object)
    is_comm = np.array(by_name, dtype=bool)[codes] | has_collective
    category = categories[codes]  # one str object per category, not one per row
    category[is_comm] = "nccl"
    return is_comm, category


def comm_by_context(kernels: pd.DataFrame, under_comm_op: np.ndarray) -> np.ndarray:
    """is_nccl widened by launch context: kernels of category "other" launched under a
    communication op (`under_comm_op`: per op row, it or an enclosing op matches COMM_OP; the
    linker walks the ancestry), or running on a stream whose other kernels are all
    communication."""
    is_comm = kernels["is_nccl"].to_numpy(dtype=bool).copy()
    if not len(kernels):
        return is_comm
    other = (kernels["category"].astype(str) == "other").to_numpy()
    op = kernels["op_idx"].to_numpy(dtype=np.int64)
    launched = np.zeros(len(kernels), dtype=bool)
    has_op = (op >= 0) & (op < len(under_comm_op))
    launched[has_op] = under_comm_op[op[has_op]]
    is_comm |= other & launched
    key = kernels["device"].to_numpy(dtype=np.int64) * (1 << 32) \
        + kernels["stream"].to_numpy(dtype=np.int64)
    frame = pd.DataFrame({"key": key, "comm": is_comm, "known": is_comm | ~other})
    per_stream = frame.groupby("key")[["comm", "known"]].sum()
    # A stream is a comm stream of its own when every kernel the name rules know on it is
    # communication (and there is at least one).
    only_comm = per_stream.index[(per_stream["comm"] > 0)
                                 & (per_stream["comm"] == per_stream["known"])]
    return is_comm | (other & np.isin(key, only_comm.to_numpy()))
