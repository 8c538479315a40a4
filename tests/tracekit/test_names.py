"""Kernel labels: templated PyTorch kernels that share an outer name stay distinguishable; names
are matched against patterns once per distinct name, with the same answer as row by row, and a
text column is factorized as pandas would, whether its equal strings are one object or several."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.names import cut_to, factorize_rows, factorize_text, kernel_label, names_matching
from tracekit.pipeline import load

REPO = Path(__file__).resolve().parents[2]

LABELS = {
    # (name as recorded, label)
    "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<"
    "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() "
    "const::{lambda()#7}::operator()() const::{lambda(float)#1}>(at::TensorIteratorBase&, "
    "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() "
    "const::{lambda()#7}::operator()() const::{lambda(float)#1} const&)::{lambda(int)#1}>(int, "
    "at::native::gpu_kernel_impl_nocast<...>)": "elementwise_kernel[direct_copy_kernel_cuda]",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
    "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)":
        "vectorized_elementwise_kernel[FillFunctor]",
    "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl<"
    "at::native::BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float>"
    " > >(at::TensorIteratorBase&, at::native::BinaryFunctor<float, float, float, "
    "at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, ...)":
        "elementwise_kernel[MulFunctor]",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<"
    "float, float, float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<...>)":
        "reduce_kernel[MeanOps]",
    "void at::native::(anonymous namespace)::softmax_warp_forward<float, float, float, 10, false,"
    " false>(float*, float const*, int, int, int, bool const*, int, bool)":
        "softmax_warp_forward",
    "std::enable_if<!(false), void>::type internal::gemvx::kernel<int, int, float, float, float,"
    " float, false, true, true, false, 7, false, cublasGemvParams<cublasGemvTensorStridedBatched<"
    "float const>, cublasGemvTensorStridedBatched<float>, float> >(cublasGemvParams<...>)":
        "gemvx::kernel[cublasGemvParams]",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)":
        "ncclDevKernel_AllGather_RING_LL",
    "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT":
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT",
    "triton_poi_fused__to_copy_add_select_backward_stack_14":
        "triton_poi_fused__to_copy_add_select_backward_stack_14",
}


@pytest.mark.parametrize("name", list(LABELS))
def test_label(name: str) -> None:
    assert kernel_label(name) == LABELS[name]


def test_missing_name_and_cut() -> None:
    assert kernel_label(None) == kernel_label("") == "-"
    assert cut_to("abcdef", 4) == "abc…" and cut_to("abc", 3) == "abc"


def test_reference_run_kernels_sharing_an_outer_name_get_distinct_labels() -> None:
    """In pathologies-2gpu the eager tie copy and its add are both `elementwise_kernel`s."""
    trace = load(REPO / "traces" / "pathologies-2gpu" / "rank0.pt.trace.json.gz", link=False,
                 progress=False).traces[0]
    names = trace.kernels["name"].astype(str).unique()
    elementwise = [n for n in names if kernel_label(n).startswith("elementwise_kernel[")]
    labels = {kernel_label(n) for n in elementwise}
    assert {"elementwise_kernel[direct_copy_kernel_cuda]",
            "elementwise_kernel[CUDAFunctor_add]"} <= labels
    # Distinct kernels with the same outer name may share a label only when they differ in
    # scalar types or block sizes alone, never in what they compute.
    assert len(labels) >= 2


def test_several_patterns_match_each_row_as_a_search_of_that_row_would() -> None:
    names = ["aten::item", "cudaMemcpy", "x.py(3): f", "aten::item", "", "cudaMemcpyAsync"]
    patterns = (re.compile(r"item$"), re.compile(r"\(\d+\): "), re.compile(r"^cuda(?!.*Async)"))
    expected = [[p.search(n) is not None for n in names] for p in patterns]
    for column in (names, pd.Series(names, dtype=object), pd.Series(names, dtype="str")):
        assert [list(m) for m in names_matching(column, patterns)] == expected


def test_a_missing_name_matches_no_pattern() -> None:
    names = np.array(["aten::item", None, float("nan"), "aten::mm"], dtype=object)
    (item,) = names_matching(names, (re.compile(r"."),))
    assert list(item) == [True, False, False, True]


texts = st.lists(st.one_of(st.sampled_from(["a", "b", "ab", ""]), st.none(),
                           st.just(float("nan"))), max_size=30)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.booleans(), max_size=30))
def test_a_text_column_is_factorized_as_pandas_does_with_strings_shared_or_not(values,
                                                                               copied) -> None:
    """Some strings are fresh copies of an equal one: they still share its code."""
    held = [("".join(list(v)) + "") if isinstance(v, str) and i < len(copied) and copied[i]
            else v for i, v in enumerate(values)]
    array = np.array([*held, None], dtype=object)[:-1]
    for column in (array, array[::2], pd.Series(array, dtype=object), list(array)):
        codes, uniques = factorize_text(column)
        expected_codes, expected_uniques = pd.factorize(np.asarray(column, dtype=object))
        assert list(codes) == list(expected_codes)
        assert list(uniques) == list(expected_uniques)


def reference_row_codes(columns: list[np.ndarray]) -> tuple[list[int], list[tuple]]:
    """Rows numbered by first appearance of their tuple of values, in plain Python."""
    seen: dict[tuple, int] = {}
    codes = [seen.setdefault(row, len(seen)) for row in zip(*columns, strict=True)]
    return codes, list(seen)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "ab", ""]) | st.none(),
                          st.integers(-3, 3), st.booleans(), st.sampled_from(["x", "y"])),
                max_size=40))
def test_rows_of_several_columns_are_numbered_by_first_appearance(rows) -> None:
    """Text (None included, some strings fresh copies of an equal one), integer and boolean
    columns together: equal rows share a code, and `first` reads the distinct rows back."""
    texts = [("".join(list(t)) + "") if t is not None and i % 2 else t
             for i, (t, _, _, _) in enumerate(rows)]
    columns = [np.array([*texts, None], dtype=object)[:-1],
               np.array([r[1] for r in rows], dtype=np.int64),
               np.array([r[2] for r in rows], dtype=bool),
               np.array([*(r[3] for r in rows), None], dtype=object)[:-1]]
    codes, first = factorize_rows(*columns)
    expected_codes, expected_rows = reference_row_codes(columns)
    assert list(codes) == expected_codes
    assert list(zip(*(c[first] for c in columns), strict=True)) == expected_rows


def test_rows_of_many_wide_columns_keep_their_codes_exact() -> None:
    """Five columns of 65,535 distinct values each: their codes' product is 2**80, so an
    unchecked int64 product would drop the first column altogether (65536**4 * c == 0 mod
    2**64) and join rows that differ only there; the rows seen so far are renumbered instead."""
    n = 65_536
    columns = [np.arange(n) % (n - 1) for _ in range(5)]
    columns[0] = columns[0].copy()
    columns[0][-1] = 5  # the last row differs from the first in column 0 alone
    codes, first = factorize_rows(*columns)
    expected, _ = pd.factorize(pd.MultiIndex.from_arrays(columns))
    assert codes[-1] != codes[0]
    assert list(codes) == list(expected)
    assert len(first) == n
