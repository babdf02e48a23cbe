/*
 * Expands the chunk kernels (ce_leaf_template.h) for every element type on
 * the instruction set named by CE_ISA, with CE_TARGET as the function
 * attribute that selects it. Included once per instruction set.
 */
#define CE_CAT4_(a, b, c, d) a##b##c##d
#define CE_CAT4(a, b, c, d) CE_CAT4_(a, b, c, d)

/* float32: 16 lanes, exponentials in float, sums in double */
#define CE_T float
#define CE_VT ce_vf
#define CE_VIT ce_vi32
#define CE_W 16
#define CE_IOTA ((ce_vi32){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
#define CE_VEXP ce_exp_f
#define CE_SELECT ce_select_f
#define CE_ACC ce_acc_f
#define CE_ACC_ADD ce_acc_add_f
#define CE_ACC_SUM ce_acc_sum_f
#define CE_NAME(x) CE_CAT4(ce_, x, _f32_, CE_ISA)
#include "ce_leaf_template.h"
#undef CE_T
#undef CE_VT
#undef CE_VIT
#undef CE_W
#undef CE_IOTA
#undef CE_VEXP
#undef CE_SELECT
#undef CE_ACC
#undef CE_ACC_ADD
#undef CE_ACC_SUM
#undef CE_NAME

/* float64: 8 lanes, all in double */
#define CE_T double
#define CE_VT ce_vd
#define CE_VIT ce_vi64
#define CE_W 8
#define CE_IOTA ((ce_vi64){0, 1, 2, 3, 4, 5, 6, 7})
#define CE_VEXP ce_exp_d
#define CE_SELECT ce_select_d
#define CE_ACC ce_acc_d
#define CE_ACC_ADD ce_acc_add_d
#define CE_ACC_SUM ce_acc_sum_d
#define CE_NAME(x) CE_CAT4(ce_, x, _f64_, CE_ISA)
#include "ce_leaf_template.h"
#undef CE_T
#undef CE_VT
#undef CE_VIT
#undef CE_W
#undef CE_IOTA
#undef CE_VEXP
#undef CE_SELECT
#undef CE_ACC
#undef CE_ACC_ADD
#undef CE_ACC_SUM
#undef CE_NAME
