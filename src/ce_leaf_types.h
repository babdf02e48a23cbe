/*
 * Expands the chunk kernels of CE_TYPE_BODY (ce_leaf_template.h,
 * ce_family_template.h) for every element type on
 * the instruction set named by CE_ISA, with CE_TARGET as the function
 * attribute that selects it, CE_VW (_w4, _w8, _w16) naming the vector width
 * of its registers (ce_vec.h) and CE_LANES its float lanes, CE_F16_LOAD /
 * CE_F16_STORE / CE_BF16_LOAD as the half-precision conversions, CE_EXP_F32
 * and CE_LOG_F32 as the float exponential and logarithm (with CE_VEXP,
 * CE_VLOG, CE_VLOG1P the compute type's exponential and logarithms, CE_VLOG1P_CORE log1p without its
 * special values, for arguments in (-1, 1], CE_BCE_DX binary cross-entropy's
 * gradient), CE_MAX_F32 / CE_MAX_F64 as the lane maxima,
 * CE_ANY_ABOVE_F32 / CE_ANY_ABOVE_F64 as the lane tests and
 * CE_FMS_F32 / CE_FMS_F64 as the fused multiply-subtracts to use there.
 * Included once per instruction set, whose macros it undefines at the end.
 */
#define CE_CAT4_(a, b, c, d) a##b##c##d
#define CE_CAT4(a, b, c, d) CE_CAT4_(a, b, c, d)
#define CE_CAT3_(a, b, c) a##b##c
#define CE_CAT3(a, b, c) CE_CAT3_(a, b, c)
/* The generic vector function or type `name` at this path's width. */
#define CE_WIDE(name) CE_CAT3(ce_, name, CE_VW)

/* Everything computed in float lanes: float32, float16, bfloat16. */
#define CE_CT float
#define CE_VT CE_WIDE(vf)
#define CE_VIT CE_WIDE(vi32)
#define CE_W CE_LANES
#define CE_IOTA CE_WIDE(iota_i32)()
#define CE_VEXP CE_EXP_F32
#define CE_VLOG CE_LOG_F32
#define CE_VLOG1P CE_WIDE(log1p_f)
#define CE_VLOG1P_CORE CE_WIDE(log1p_core_f)
#define CE_BCE_DX CE_WIDE(bce_dx_f)
#define CE_VSTORE_CT CE_WIDE(store_f32)
#define CE_SOFTCAP CE_WIDE(softcap_f)
#define CE_SELECT CE_WIDE(select_f)
#define CE_VMAX CE_MAX_F32
#define CE_VANY_ABOVE CE_ANY_ABOVE_F32
#define CE_VFMS CE_FMS_F32
#define CE_ACC CE_WIDE(acc_f)
#define CE_ACC_ADD CE_WIDE(acc_add_f)
#define CE_ACC_SUM CE_WIDE(acc_sum_f)

#define CE_VLOAD_CT CE_WIDE(load_f32)

#define CE_T float
#define CE_VLOAD CE_WIDE(load_f32)
#define CE_VSTORE CE_WIDE(store_f32)
#define CE_NAME(x) CE_CAT4(ce_, x, _f32_, CE_ISA)
#include CE_TYPE_BODY
#undef CE_T
#undef CE_VLOAD
#undef CE_VSTORE
#undef CE_NAME

#define CE_T uint16_t
#define CE_VLOAD CE_F16_LOAD
#define CE_VSTORE CE_F16_STORE
#define CE_NAME(x) CE_CAT4(ce_, x, _f16_, CE_ISA)
#include CE_TYPE_BODY
#undef CE_VLOAD
#undef CE_VSTORE
#undef CE_NAME

#define CE_VLOAD CE_BF16_LOAD
#define CE_VSTORE CE_WIDE(store_bf16)
#define CE_NAME(x) CE_CAT4(ce_, x, _bf16_, CE_ISA)
#include CE_TYPE_BODY
#undef CE_T
#undef CE_VLOAD
#undef CE_VSTORE
#undef CE_NAME

#undef CE_CT
#undef CE_VT
#undef CE_VIT
#undef CE_W
#undef CE_IOTA
#undef CE_VEXP
#undef CE_VLOG
#undef CE_VLOG1P
#undef CE_VLOG1P_CORE
#undef CE_BCE_DX
#undef CE_VSTORE_CT
#undef CE_SOFTCAP
#undef CE_SELECT
#undef CE_VMAX
#undef CE_VANY_ABOVE
#undef CE_VFMS
#undef CE_ACC
#undef CE_ACC_ADD
#undef CE_ACC_SUM
#undef CE_VLOAD_CT

/* float64: half as many double lanes */
#define CE_T double
#define CE_CT double
#define CE_VT CE_WIDE(vd)
#define CE_VIT CE_WIDE(vi64)
#define CE_W (CE_LANES / 2)
#define CE_IOTA CE_WIDE(iota_i64)()
#define CE_VLOAD CE_WIDE(load_f64)
#define CE_VSTORE CE_WIDE(store_f64)
#define CE_VLOAD_CT CE_WIDE(load_f64)
#define CE_VEXP CE_WIDE(exp_d)
#define CE_VLOG CE_WIDE(log_d)
#define CE_VLOG1P CE_WIDE(log1p_d)
#define CE_VLOG1P_CORE CE_WIDE(log1p_core_d)
#define CE_BCE_DX CE_WIDE(bce_dx_d)
#define CE_VSTORE_CT CE_WIDE(store_f64)
#define CE_SOFTCAP CE_WIDE(softcap_d)
#define CE_SELECT CE_WIDE(select_d)
#define CE_VMAX CE_MAX_F64
#define CE_VANY_ABOVE CE_ANY_ABOVE_F64
#define CE_VFMS CE_FMS_F64
#define CE_ACC CE_WIDE(acc_d)
#define CE_ACC_ADD CE_WIDE(acc_add_d)
#define CE_ACC_SUM CE_WIDE(acc_sum_d)
#define CE_NAME(x) CE_CAT4(ce_, x, _f64_, CE_ISA)
#include CE_TYPE_BODY
#undef CE_T
#undef CE_CT
#undef CE_VT
#undef CE_VIT
#undef CE_W
#undef CE_IOTA
#undef CE_VLOAD
#undef CE_VSTORE
#undef CE_VLOAD_CT
#undef CE_VEXP
#undef CE_VLOG
#undef CE_VLOG1P
#undef CE_VLOG1P_CORE
#undef CE_BCE_DX
#undef CE_VSTORE_CT
#undef CE_SOFTCAP
#undef CE_SELECT
#undef CE_VMAX
#undef CE_VANY_ABOVE
#undef CE_VFMS
#undef CE_ACC
#undef CE_ACC_ADD
#undef CE_ACC_SUM
#undef CE_NAME
#undef CE_CAT3_
#undef CE_CAT3
#undef CE_WIDE

/* the instruction set's own macros (ce_isa_list.h) */
#undef CE_BF16_LOAD
#undef CE_EXP_F32
#undef CE_LOG_F32
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
