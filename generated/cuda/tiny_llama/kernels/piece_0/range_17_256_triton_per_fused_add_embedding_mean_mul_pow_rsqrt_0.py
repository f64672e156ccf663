# Triton source of range_17_256_triton_per_fused_add_embedding_mean_mul_pow_rsqrt_0, kept for review: the package launches the cubin
# beside it and never imports this file.
import triton
import triton.language as tl

from torch._inductor.runtime import triton_helpers, triton_heuristics
from torch._inductor.runtime.triton_helpers import libdevice, math as tl_math
from torch._inductor.runtime.hints import (
    AutotuneHint,
    ReductionHint,
    TileHint,
    DeviceProperties,
)

triton_helpers.set_driver_to_gpu()


@triton_heuristics.persistent_reduction(
    size_hints={"x": 32, "r0_": 64},
    reduction_hint=ReductionHint.INNER,
    filename=__file__,
    triton_meta={
        "signature": {
            "in_ptr0": "*i64",
            "in_ptr1": "*fp32",
            "in_ptr2": "*fp32",
            "out_ptr0": "*fp32",
            "out_ptr2": "*fp32",
            "xnumel": "i32",
            "r0_numel": "i32",
            "XBLOCK": "constexpr",
        },
        "device": DeviceProperties(
            type="cuda",
            index=0,
            multi_processor_count=132,
            cc=90,
            major=9,
            regs_per_multiprocessor=65536,
            max_threads_per_multi_processor=2048,
            max_threads_per_block=1024,
            warp_size=32,
        ),
        "constants": {},
        "native_matmul": False,
        "enable_fp_fusion": True,
        "launch_pdl": False,
        "disable_ftz": False,
        "configs": [
            {
                (0,): [["tt.divisibility", 16]],
                (1,): [["tt.divisibility", 16]],
                (2,): [["tt.divisibility", 16]],
                (3,): [["tt.divisibility", 16]],
                (4,): [["tt.divisibility", 16]],
                (6,): [["tt.divisibility", 16]],
            }
        ],
    },
    inductor_meta={
        "grid_type": "Grid1D",
        "autotune_hints": set(),
        "kernel_name": "triton_per_fused_add_embedding_mean_mul_pow_rsqrt_0",
        "mutated_arg_names": [],
        "optimize_mem": True,
        "no_x_dim": None,
        "atomic_add_found": False,
        "num_load": 2,
        "num_store": 2,
        "num_reduction": 1,
        "backend_hash": "91D1D1166449D9E2EB66EB9770C9E2C3B0FEB787341F27FEB4D3F0338DA50336",
        "assert_indirect_indexing": True,
        "autotune_local_cache": True,
        "autotune_pointwise": False,
        "autotune_remote_cache": None,
        "force_disable_caches": False,
        "dynamic_scale_rblock": True,
        "max_autotune": False,
        "max_autotune_pointwise": False,
        "min_split_scan_rblock": 256,
        "spill_threshold": 16,
        "store_cubin": False,
        "deterministic": True,
        "force_filter_reduction_configs": False,
        "mix_order_reduction_allow_multi_stages": False,
        "are_deterministic_algorithms_enabled": False,
        "has_loadstore_with_contiguous_rdim": True,
        "tiling_scores": {"x": 136, "r0_": 17664},
    },
)
@triton.jit
def triton_per_fused_add_embedding_mean_mul_pow_rsqrt_0(
    in_ptr0,
    in_ptr1,
    in_ptr2,
    out_ptr0,
    out_ptr2,
    xnumel,
    r0_numel,
    XBLOCK: tl.constexpr,
):
    r0_numel = 64
    R0_BLOCK: tl.constexpr = 64
    rnumel = r0_numel
    RBLOCK: tl.constexpr = R0_BLOCK
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:, None]
    xmask = xindex < xnumel
    r0_index = tl.arange(0, R0_BLOCK)[None, :]
    r0_offset = 0
    r0_mask = tl.full([R0_BLOCK], True, tl.int1)[None, :]
    roffset = r0_offset
    rindex = r0_index
    x0 = xindex
    r0_1 = r0_index
    tmp0 = tl.load(in_ptr0 + (x0), xmask, eviction_policy="evict_last")
    tmp18 = tl.load(in_ptr2 + (r0_1), None, eviction_policy="evict_last")
    tmp1 = tl.full([1, 1], 128, tl.int32)
    tmp2 = tmp0 + tmp1
    tmp3 = tmp0 < 0
    tmp4 = tl.where(tmp3, tmp2, tmp0)
    tl.device_assert(
        ((0 <= tmp4) & (tmp4 < 128)) | ~(xmask), "index out of bounds: 0 <= tmp4 < 128"
    )
    tmp6 = tl.load(in_ptr1 + (r0_1 + 64 * tmp4), xmask, other=0.0)
    tmp7 = tmp6 * tmp6
    tmp8 = tl.broadcast_to(tmp7, [XBLOCK, R0_BLOCK])
    tmp10 = tl.where(xmask, tmp8, 0)
    tmp11 = tl.sum(tmp10, 1)[:, None].to(tl.float32)
    tmp12 = tl.full([1, 1], 64.0, tl.float32)
    tmp13 = tmp11 / tmp12
    tmp14 = tl.full([1, 1], 1e-06, tl.float32)
    tmp15 = tmp13 + tmp14
    tmp16 = libdevice.rsqrt(tmp15)
    tmp17 = tmp6 * tmp16
    tmp19 = tmp17 * tmp18
    tl.store(out_ptr0 + (r0_1 + 64 * x0), tmp6, xmask)
    tl.store(out_ptr2 + (r0_1 + 64 * x0), tmp19, xmask)
