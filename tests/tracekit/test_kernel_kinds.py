"""Kernel categories come from the kernel's own name, and communication is recognised beyond
names that say "nccl": by library, by the collective's fields, by the op that launched it and by
its stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracekit.link.ancestry import ancestor_matching
from tracekit.load.frames import name_matches
from tracekit.load.kernel_kinds import COMM_OP, comm_by_context, is_comm_name, kernel_category
from tracekit.names import kernel_own_name
from tracekit.pipeline import load

EXTERNAL = Path("/work/shared/traces-external")

# Names as recorded in real traces (the fbgemm ones in HTA's sampled 128-rank trace).
CATEGORIES = [
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "gemm"),
    ("nvjet_tst_128x64_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("ampere_sgemm_128x64_nn", "gemm"),
    ("Cijk_Alik_Bljk_SB_MT64x16x32", "gemm"),
    ("void cutlass::Kernel<cutlass_80_tensorop_s1688gemm_128x128_16x4_nn_align4>("
     "cutlass_80_tensorop_s1688gemm_128x128_16x4_nn_align4::Params)", "gemm"),
    ("void cutlass_cudnn_train::Kernel<cutlass_tensorop_s1688wgrad_optimized_tf32_256x128_16x3_"
     "nhwc_align4>(cutlass_tensorop_s1688wgrad_optimized_tf32_256x128_16x3_nhwc_align4::Params)",
     "gemm"),
    ("std::enable_if<!(false), void>::type internal::gemvx::kernel<int, int, float, float, "
     "float, float, false, true, true, false, 7, false, cublasGemvParams<float> >(x)", "gemm"),
    ("flash_fwd_kernel<Flash_fwd_kernel_traits<128>>", "attention"),
    ("void cutlass::device_kernel<flash::FlashAttnFwdSm90<cute::tuple<int>, 4> >(Params)",
     "attention"),
    ("triton_poi_fused_add_select_backward_2", "triton"),
    ("triton_red_fused_sum_1", "triton"),
    ("void at::native::reduce_kernel<512, 1>", "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>", "elementwise"),
    ("Memcpy DtoD", "memory"),
    ("some_custom_kernel", "other"),
    # Template arguments and namespaces that say gemm are not what the kernel computes.
    ("void bounds_check_indices_kernel<long, false>(at::GenericPackedTensorAccessor<long, 1ul, "
     "at::RestrictPtrTraits, int>, long, fbgemm_gpu::FixedDivisor)", "other"),
    ("void at::native::vectorized_elementwise_kernel<4, fbgemm_gpu::_float_to_hfp8_gpu("
     "at::Tensor const&, long, long, double)::{lambda(float)#1}, at::detail::Array<char*, 2> >("
     "int, fbgemm_gpu::_float_to_hfp8_gpu(at::Tensor const&, long, long, double)::"
     "{lambda(float)#1}, at::detail::Array<char*, 2>)", "elementwise"),
    ("void fbgemm_gpu::permute_2D_lengths_kernel<int>(int, int, int const*, int const*, int*)",
     "elementwise"),
    ("void split_embedding_backward_codegen_rowwise_adagrad_weighted_kernel_cta_per_row_1<"
     "c10::Half, float, c10::Half, 2ul, 32>(at::GenericPackedTensorAccessor<float, 2ul>, "
     "fbgemm_gpu::FixedDivisor)", "elementwise"),
]


@pytest.mark.parametrize(("name", "expected"), CATEGORIES)
def test_category_comes_from_the_kernels_own_name(name: str, expected: str) -> None:
    assert kernel_category(name) == expected
    assert kernel_category(name, is_comm=True) == "nccl"


def test_own_name_drops_return_type_template_arguments_and_parameters() -> None:
    assert kernel_own_name("void fbgemm_gpu::permute_2D_lengths_kernel<int>(int, int)") == \
        "fbgemm_gpu::permute_2D_lengths_kernel"
    assert kernel_own_name("void cutlass::Kernel<cutlass_80_wmma_tensorop_s161616gemm_f16_"
                           "32x32_128x1_tn_align8>(Params)") == \
        "cutlass_80_wmma_tensorop_s161616gemm_f16_32x32_128x1_tn_align8"
    assert kernel_own_name("") == ""


COMM_KERNELS = [
    "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)",
    "void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*, long*)",
    "void deep_ep::internode_ll::combine<false, 7168>(void*, int*)",
    "void vllm::cross_device_reduce_1stage<c10::BFloat16, 8>(vllm::RankData*, int)",
    "void c10d::symmetric_memory::one_shot_all_reduce_kernel<float, 8>(float**, size_t)",
    "void userbuffers_fp16_sum_inplace_gpu_rr_rs(int, int, int, int, int, int, void**)",
    "mscclKernel_Sum_bf16_LL128(int, void*, bool)",
    "nvshmemi_transfer_rma_nbi_kernel(void*)",
]
NOT_COMM = [
    "triton_poi_fused_all_gather_into_tensor_copy_0",  # Inductor's copy around a collective
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::"
    "func_wrapper_t<float, at::native::sum_functor<float, float, float>::operator()("
    "at::TensorIterator&)::{lambda(float, float)#1}>, unsigned int, float, 4> >(x)",
    "void at::native::vectorized_elementwise_kernel<4, nccl_like_functor<float> >(int)",
]


@pytest.mark.parametrize("name", COMM_KERNELS)
def test_communication_libraries_are_recognised_by_name(name: str) -> None:
    assert is_comm_name(name) and kernel_category(name) == "nccl"


@pytest.mark.parametrize("name", NOT_COMM)
def test_compute_kernels_that_mention_collectives_in_arguments_are_not_communication(
        name: str) -> None:
    assert not is_comm_name(name)


def test_unknown_kernels_launched_by_c10d_or_alone_on_a_comm_stream_are_communication() -> None:
    ops = pd.DataFrame({"name": ["ProfilerStep#1", "record_param_comms", "aten::mm",
                                 "my_lib::exchange"],
                        "parent": [-1, 0, 0, 0], "depth": [0, 1, 1, 1]})
    # custom_a2a_kernel under record_param_comms; my_kernel under aten::mm on a compute
    # stream; push_kernel alone with NCCL on stream 21.
    kernels = pd.DataFrame({
        "name": ["custom_a2a_kernel", "my_kernel", "ncclDevKernel_AllReduce", "push_kernel",
                 "custom_compute"],
        "op_idx": [1, 2, -1, 3, 3], "device": 0, "stream": [20, 7, 21, 21, 7],
        "is_nccl": [False, False, True, False, False],
        "category": ["other", "other", "nccl", "other", "other"]})
    under = ancestor_matching(ops, name_matches(ops["name"], COMM_OP)) >= 0
    assert under.tolist() == [False, True, False, False]
    got = comm_by_context(kernels, under)
    # launched under record_param_comms; on a compute stream; NCCL; alone with NCCL on its
    # stream; an unknown kernel beside compute
    assert got.tolist() == [True, False, True, True, False]


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="external traces not present")
def test_fbgemm_kernels_of_a_real_trace_are_not_gemms() -> None:
    kernels = load(EXTERNAL / "sampled_128ranks_rank0.json.gz", progress=False).traces[0].kernels
    gemm = kernels[kernels["category"] == "gemm"]["name"]
    assert not gemm.str.contains("fbgemm_gpu::|bounds_check_indices").any()
    cublas_or_cutlass = "cutlass::Kernel|sgemm_|gemvx::kernel|gemvNSP_kernel|gemmk1_kernel"
    assert gemm.str.contains(cublas_or_cutlass).all()
    # 10 SendRecv kernels, the only communication there.
    assert int(kernels["is_nccl"].sum()) == 10 and np.all(
        kernels.loc[kernels["is_nccl"], "name"].str.startswith("ncclKernel_SendRecv"))
