/*
 * The one list of instruction-set paths. Expands the file named by
 * CE_TYPE_BODY (a chunk-kernel template) for every element type
 * (ce_leaf_types.h) on each instruction set the build can target, with
 * CE_ISA naming the path, CE_TARGET the function attribute that selects it,
 * CE_VW / CE_LANES its vector width, and the single-instruction helpers of
 * ce_math.h it uses (ce_leaf_types.h undefines them after use). Which path runs is decided at run time (CE_PICK in
 * ce_internal.h); the paths listed here are those of CE_FOR_EACH_ISA.
 */
#define CE_ISA baseline
#define CE_TARGET
#define CE_VW _w4
#define CE_LANES 4
#define CE_F16_LOAD ce_load_f16_w4
#define CE_F16_STORE ce_store_f16_w4
#define CE_BF16_LOAD ce_load_bf16_w4
#define CE_EXP_F32 ce_exp_f_w4
#define CE_LOG_F32 ce_log_f_w4
#define CE_MAX_F32 ce_max_f_w4
#define CE_MAX_F64 ce_max_d_w4
#define CE_ANY_ABOVE_F32 ce_any_above_f_w4
#define CE_ANY_ABOVE_F64 ce_any_above_d_w4
#define CE_FMS_F32 ce_fms_f_w4
#define CE_FMS_F64 ce_fms_d_w4
#include "ce_leaf_types.h"

#if defined(CE_HAVE_X86_DISPATCH)

#define CE_ISA avx2
#define CE_TARGET __attribute__((target("avx2,fma,f16c")))
#define CE_VW _w8
#define CE_LANES 8
#define CE_F16_LOAD ce_f16_load_avx2
#define CE_F16_STORE ce_f16_store_avx2
#define CE_BF16_LOAD ce_bf16_load_avx2
#define CE_EXP_F32 ce_exp_f_w8
#define CE_LOG_F32 ce_log_f_w8
#define CE_MAX_F32 ce_max_f_avx2
#define CE_MAX_F64 ce_max_d_avx2
#define CE_ANY_ABOVE_F32 ce_any_above_f_avx2
#define CE_ANY_ABOVE_F64 ce_any_above_d_avx2
#define CE_FMS_F32 ce_fms_f_avx2
#define CE_FMS_F64 ce_fms_d_avx2
#include "ce_leaf_types.h"

#define CE_ISA avx512
#define CE_TARGET \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define CE_VW _w16
#define CE_LANES 16
#define CE_F16_LOAD ce_f16_load_avx512
#define CE_F16_STORE ce_f16_store_avx512
#define CE_BF16_LOAD ce_bf16_load_avx512
#define CE_EXP_F32 ce_exp_f_avx512
#define CE_LOG_F32 ce_log_f_avx512
#define CE_MAX_F32 ce_max_f_avx512
#define CE_MAX_F64 ce_max_d_avx512
#define CE_ANY_ABOVE_F32 ce_any_above_f_avx512
#define CE_ANY_ABOVE_F64 ce_any_above_d_avx512
#define CE_FMS_F32 ce_fms_f_avx512
#define CE_FMS_F64 ce_fms_d_avx512
#include "ce_leaf_types.h"

#endif
