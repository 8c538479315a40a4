"""Kernel and op names: labels for people, and the keys that match names across runs.

Labels: `elementwise_kernel[direct_copy_kernel_cuda]`, not 500 characters.

PyTorch's templated kernels share one outer name (elementwise_kernel, reduce_kernel,
vectorized_elementwise_kernel) and differ only in the functor buried in their template
arguments; cut to a width, two different kernels read the same. The label keeps the outer
name and the first template argument that names what the kernel computes.

Matching keys (`normalize_kernel_name`): the leading `void ` and the argument list go; numeric
template values (vector widths, tile sizes), lambda ids (`#3`), long hashes and a trailing `_<n>`
(Inductor's kernel index) become `N` or are dropped. Template TYPE arguments are kept on
purpose: `vectorized_elementwise_kernel<4, FillFunctor<float>, ..>` and
`..<4, CUDAFunctor_add<float>, ..>` are different work, and stripping them would hide exactly
the kernels a fix removes (the select_backward zero-fill).

Names repeat thousands of times, so everything per name is computed once per distinct name
(`normalize_each`, `kernel_labels`, `name_matches`), found with `factorize_text`.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

_QUALIFIED = re.compile(r"(?<!\w)[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*")
"""Qualified names in template arguments (not the `ul` of a `2ul` literal)."""
_INT_TYPE = re.compile(r"u?int\d+_t$")
# Template arguments that say nothing about what a kernel computes: scalar types, namespaces,
# PyTorch's iterator and wrapper templates (the functor is inside them), lambda syntax.
_NOT_PAYLOAD = frozenset({
    "void", "bool", "char", "short", "int", "long", "unsigned", "signed", "float", "double",
    "const", "true", "false", "N", "Half", "BFloat16", "complex", "size_t",
    "at", "c10", "native", "anon", "std", "detail", "array", "lambda", "operator",
    "TensorIteratorBase", "TensorIterator", "Scalar", "ArrayRef", "OpaqueType",
    "TensorListMetadata", "gpu_kernel_impl", "gpu_kernel_impl_nocast", "gpu_index_kernel",
    "ReduceOp", "func_wrapper_t", "AUnaryFunctor", "BUnaryFunctor", "BinaryFunctor",
    "LoadWithCast", "StoreWithCast", "LoadWithoutCast", "StoreWithoutCast",
    "OffsetCalculator", "TrivialOffsetCalculator", "CUDAGeneratorImpl", "decltype", "nullptr",
})
_ENABLE_IF = "std::enable_if<"


def _matching_close(text: str, start: int) -> int:
    """Index just past the '>' that closes the '<' at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"<": 1, ">": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _outer_cut(text: str) -> int:
    """Index of the first '<' or '(' outside any brackets (len(text) when there is none)."""
    for i, ch in enumerate(text):
        if ch in "<(":
            return i
    return len(text)


def _payload(arguments: str, outer: str) -> str | None:
    for qualified in _QUALIFIED.findall(arguments):
        name = qualified.rsplit("::", 1)[-1]
        if (len(name) > 1 and name != outer and name not in _NOT_PAYLOAD
                and not _INT_TYPE.match(name) and not name.startswith(("Float8", "__"))):
            return name
    return None


def _declaration(name: str) -> str:
    """The kernel's declaration without its return type (`void`, a SFINAE enable_if)."""
    text = re.sub(r"^void\s+", "", str(name).strip()).replace("(anonymous namespace)", "anon")
    if text.startswith(_ENABLE_IF):  # a SFINAE return type before the kernel's own name
        text = text[_matching_close(text, len(_ENABLE_IF) - 1):].removeprefix("::type").strip()
    return text


LAUNCHER_TEMPLATES = frozenset({"Kernel", "Kernel2", "device_kernel"})
"""Kernels that only launch their first template argument (CUTLASS's `Kernel<Op>`, also as
`cutlass_cudnn_train::Kernel<Op>` inside cuDNN): the kernel's own name is that argument's."""


@lru_cache(maxsize=4096)
def kernel_own_name(name: str | None) -> str:
    """The kernel function's own qualified name, without return type, template arguments or
    parameters: `void fbgemm_gpu::bounds_check_indices_kernel<long, FixedDivisor>(...)` ->
    `fbgemm_gpu::bounds_check_indices_kernel`. A launcher template (CUTLASS's `Kernel<Op>`)
    gives its operator's name, `cutlass_80_tensorop_s1688gemm_128x128_32x3_nn_align1`.

    What a kernel computes is named here; template arguments name its types and helpers (an
    fbgemm embedding kernel's `FixedDivisor` says nothing about GEMMs)."""
    if not name:
        return ""
    text = _declaration(name)
    cut = _outer_cut(text)
    outer = text[:cut].strip()
    if outer.rsplit("::", 1)[-1] in LAUNCHER_TEMPLATES and cut < len(text) and text[cut] == "<":
        inner = text[cut + 1:_matching_close(text, cut) - 1]
        depth, end = 0, len(inner)
        for i, ch in enumerate(inner):
            depth += {"<": 1, ">": -1, "(": 1, ")": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                end = i
                break
        return kernel_own_name(inner[:end].strip()) or outer
    return outer or text


@lru_cache(maxsize=4096)
def kernel_label(name: str | None) -> str:
    """`void at::native::elementwise_kernel<128, 2, ...direct_copy_kernel_cuda...>(int)` ->
    `elementwise_kernel[direct_copy_kernel_cuda]`; names without template arguments lose only
    their namespace and argument list."""
    if not name:
        return "-"
    text = _declaration(name)
    cut = _outer_cut(text)
    parts = text[:cut].strip().split("::")
    # A bare `kernel` says nothing without its namespace (cuBLAS's gemvx::kernel).
    outer = "::".join(parts[-2:]) if parts[-1] == "kernel" and len(parts) > 1 else parts[-1]
    outer = outer or text
    if cut < len(text) and text[cut] == "<":
        payload = _payload(text[cut:], outer)
        if payload:
            return f"{outer}[{payload}]"
    return outer


def kernel_labels(names: pd.Series) -> pd.Series:
    """kernel_label of every name, computed once per distinct name."""
    labels = {name: kernel_label(name) for name in pd.unique(names.astype(str))}
    return names.astype(str).map(labels)


def cut_to(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis when it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"





_ANON = re.compile(r"\(anonymous namespace\)")


_LAMBDA_ID = re.compile(r"#\d+")


# A hash: 12+ hex digits, or 32+ base-32-ish characters (Inductor's FX graph keys); short
# alphanumeric runs are real name parts (`tilesize256x64x8`, `sm90`).
_HASH = re.compile(r"(?<![0-9A-Za-z])(?:(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{12,}"
                   r"|(?=[0-9a-z]*\d)[0-9a-z]{32,})(?![0-9A-Za-z])")


_NUMBER = re.compile(r"(?<![A-Za-z_0-9.])\d+(?:\.\d+)?(?:[uU]?[lL]{0,2}|[fF])?\b")


_TRAILING_INDEX = re.compile(r"_\d+$")


_SPACES = re.compile(r"\s+")


def _cut_argument_list(name: str) -> str:
    """Drop the outermost `(...)` parameter list: the first `(` outside template brackets."""
    depth = 0
    for pos, char in enumerate(name):
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(depth - 1, 0)
        elif char == "(" and depth == 0 and pos > 0:
            return name[:pos]
    return name


def normalize_kernel_name(name: str) -> str:
    """The cross-run matching key of a kernel name (see the module docstring for why)."""
    key = name.strip()
    if key.startswith("void "):
        key = key[5:]
    key = _ANON.sub("anon", key)
    key = _cut_argument_list(key)
    key = _LAMBDA_ID.sub("#N", key)
    key = _HASH.sub("<hash>", key)
    key = _NUMBER.sub("N", key)
    key = _TRAILING_INDEX.sub("", key)
    return _SPACES.sub(" ", key).strip()


def normalize_label(name: str) -> str:
    """Matching key of an op or record_function label: hashes and `#<n>` ids removed."""
    return _SPACES.sub(" ", _HASH.sub("<hash>", _LAMBDA_ID.sub("#N", name.strip())))


def factorize_text(values: pd.Series | np.ndarray | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`pd.factorize(values)` of a text column: (codes, the distinct values in order of first
    appearance as an object array); -1 for None/NaN.

    The loader holds one str per distinct value (tracekit.load.columns), so an object column
    repeats the same few objects: they are told apart by address first (`distinct_objects`:
    integers hash and compare at C speed, where pd.factorize hashes and compares every row's
    str), and only the distinct objects are then factorized by value, so equal strings held
    twice still get one code. Other columns (pandas' arrow strings) are factorized by pandas.
    """
    if isinstance(values, pd.Series) and values.dtype != object:
        codes, uniques = pd.factorize(values)
        return codes, np.asarray(uniques, dtype=object)
    array = object_array(values)
    object_codes, first = distinct_objects(array)
    value_codes, uniques = pd.factorize(array[first])
    return value_codes[object_codes], np.asarray(uniques, dtype=object)


def factorize_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pd.factorize` of the rows of several equally long columns taken together: each row's
    code (distinct rows numbered in order of first appearance) and the first row of each code,
    from which the distinct rows are read (`column[first]`). None is a value of its own.

    Each column is factorized alone (text by `factorize_text`: its repeated str objects
    compare by address), and the codes are combined into one integer per row, so no tuple of
    Python objects is built per row as `pd.MultiIndex.from_frame` does: on 700k ops of a
    690 MB rank, 0.02 s against 0.10.
    """
    n = len(columns[0])
    combined = np.zeros(n, dtype=np.int64)
    bound = 1
    for column in columns:
        codes, width = _column_codes(column)
        if bound * width >= 2**62:  # keep the product exact: renumber what is combined so far
            combined, uniques = pd.factorize(combined)
            bound = max(len(uniques), 1)
        combined = combined * width + codes
        bound *= width
    codes, _ = pd.factorize(combined)
    return codes, first_rows(codes)


def distinct_rows(*columns: np.ndarray) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """`factorize_rows`, with the distinct rows themselves (tuples, in code order)."""
    codes, first = factorize_rows(*columns)
    return codes, list(zip(*(np.asarray(column)[first] for column in columns), strict=True))


def _column_codes(column: np.ndarray) -> tuple[np.ndarray, int]:
    """One column's codes, 0..width-1 (None/NaN a code of its own), and their width."""
    array = np.asarray(column)
    if array.dtype == bool:
        return array.astype(np.int64), 2
    if array.dtype == object:
        codes, uniques = factorize_text(array)
    else:
        codes, uniques = pd.factorize(array)
    return codes.astype(np.int64) + 1, len(uniques) + 1


def object_array(values: pd.Series | np.ndarray | list[str]) -> np.ndarray:
    """The values as a C-contiguous object array (the column's own array when it is one)."""
    array = np.ascontiguousarray(values.to_numpy() if isinstance(values, pd.Series)
                                 else np.asarray(values, dtype=object))
    return array if array.dtype == object else array.astype(object)


def distinct_objects(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a C-contiguous object array: each row's object code (distinct objects numbered in
    order of first appearance, told apart by address, not by value) and the first row holding
    each object."""
    if len(array) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    object_codes, _ = pd.factorize(_addresses(array))
    return object_codes, first_rows(object_codes)


def first_rows(codes: np.ndarray) -> np.ndarray:
    """The first row of each code, for codes numbered in order of first appearance (as
    `pd.factorize` numbers them): where the running maximum grows."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.intp)
    seen = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[True, seen[1:] > seen[:-1]])


def _addresses(array: np.ndarray) -> np.ndarray:
    """The addresses of the objects a C-contiguous object array holds, as integers: a view
    of its pointers (valid while `array` is alive), not a copy."""
    pointers = (ctypes.c_ssize_t * len(array)).from_address(array.ctypes.data)
    return np.frombuffer(pointers, dtype=np.intp)


def normalize_each(names: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    """Apply a name normaliser once per distinct name (names repeat thousands of times)."""
    if names.empty:
        return names.astype(object)
    codes, uniques = pd.factorize(names.astype(str))
    mapped = np.array([fn(u) for u in uniques], dtype=object)
    return pd.Series(mapped[codes], index=names.index)


def name_matches(names: pd.Series | list[str] | np.ndarray,
                 pattern: re.Pattern[str]) -> np.ndarray:
    """pattern.search per row, evaluated once per distinct name (names repeat a lot)."""
    return names_matching(names, (pattern,))[0]


def names_matching(names: pd.Series | list[str] | np.ndarray,
                   patterns: tuple[re.Pattern[str], ...]) -> list[np.ndarray]:
    """`name_matches` for each of several patterns, the names factorized once; a missing name
    (None/NaN) matches no pattern."""
    if len(names) == 0:
        return [np.zeros(0, dtype=bool) for _ in patterns]
    codes, uniques = factorize_text(names)
    texts = [str(u) for u in uniques]
    # One slot past the distinct names, False, for the missing ones (code -1).
    return [np.array([pattern.search(t) is not None for t in texts] + [False],
                     dtype=bool)[codes] for pattern in patterns]
