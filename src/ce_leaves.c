/*
 * The chunk kernels for every element type, compiled for each instruction
 * set the build can target. Which one runs is decided at run time
 * (ce_kernels.c), so one binary runs on any x86-64 and uses AVX-512 where
 * the CPU has it.
 */
#include <math.h>

#include "ce_internal.h"
#include "ce_math.h"

#define CE_ISA baseline
#define CE_TARGET
#define CE_VW _w4
#define CE_LANES 4
#define CE_F16_LOAD ce_load_f16_w4
#define CE_F16_STORE ce_store_f16_w4
#define CE_BF16_LOAD ce_load_bf16_w4
#define CE_EXP_F32 ce_exp_f_w4
#define CE_MAX_F32 ce_max_f_w4
#define CE_MAX_F64 ce_max_d_w4
#define CE_ANY_ABOVE_F32 ce_any_above_f_w4
#define CE_ANY_ABOVE_F64 ce_any_above_d_w4
#define CE_FMS_F32 ce_fms_f_w4
#define CE_FMS_F64 ce_fms_d_w4
#include "ce_leaf_types.h"
#undef CE_BF16_LOAD
#undef CE_EXP_F32
#undef CE_MAX_F32
#undef CE_MAX_F64
#undef CE_ANY_ABOVE_F32
#undef CE_ANY_ABOVE_F64
#undef CE_FMS_F32
#undef CE_FMS_F64
#undef CE_ISA
#undef CE_TARGET
#undef CE_F16_LOAD
#undef CE_F16_STORE
#undef CE_VW
#undef CE_LANES

#if defined(CE_HAVE_X86_DISPATCH)

#define CE_ISA avx2
#define CE_TARGET __attribute__((target("avx2,fma,f16c")))
#define CE_VW _w8
#define CE_LANES 8
#define CE_F16_LOAD ce_f16_load_avx2
#define CE_F16_STORE ce_f16_store_avx2
#define CE_BF16_LOAD ce_bf16_load_avx2
#define CE_EXP_F32 ce_exp_f_w8
#define CE_MAX_F32 ce_max_f_avx2
#define CE_MAX_F64 ce_max_d_avx2
#define CE_ANY_ABOVE_F32 ce_any_above_f_avx2
#define CE_ANY_ABOVE_F64 ce_any_above_d_avx2
#define CE_FMS_F32 ce_fms_f_avx2
#define CE_FMS_F64 ce_fms_d_avx2
#include "ce_leaf_types.h"
#undef CE_BF16_LOAD
#undef CE_EXP_F32
#undef CE_MAX_F32
#undef CE_MAX_F64
#undef CE_ANY_ABOVE_F32
#undef CE_ANY_ABOVE_F64
#undef CE_FMS_F32
#undef CE_FMS_F64
#undef CE_ISA
#undef CE_TARGET
#undef CE_F16_LOAD
#undef CE_F16_STORE
#undef CE_VW
#undef CE_LANES

#define CE_ISA avx512
#define CE_TARGET \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define CE_VW _w16
#define CE_LANES 16
#define CE_F16_LOAD ce_f16_load_avx512
#define CE_F16_STORE ce_f16_store_avx512
#define CE_BF16_LOAD ce_bf16_load_avx512
#define CE_EXP_F32 ce_exp_f_avx512
#define CE_MAX_F32 ce_max_f_avx512
#define CE_MAX_F64 ce_max_d_avx512
#define CE_ANY_ABOVE_F32 ce_any_above_f_avx512
#define CE_ANY_ABOVE_F64 ce_any_above_d_avx512
#define CE_FMS_F32 ce_fms_f_avx512
#define CE_FMS_F64 ce_fms_d_avx512
#include "ce_leaf_types.h"
#undef CE_BF16_LOAD
#undef CE_EXP_F32
#undef CE_MAX_F32
#undef CE_MAX_F64
#undef CE_ANY_ABOVE_F32
#undef CE_ANY_ABOVE_F64
#undef CE_FMS_F32
#undef CE_FMS_F64
#undef CE_ISA
#undef CE_TARGET
#undef CE_F16_LOAD
#undef CE_F16_STORE
#undef CE_VW
#undef CE_LANES

#endif
