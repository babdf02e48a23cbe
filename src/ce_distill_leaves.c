/*
 * The distillation chunk kernels (ce_distill_template.h) for every element
 * type on every instruction-set path of ce_isa_list.h.
 */
#include <math.h>

#include "ce_distill_leaf.h"
#include "ce_math.h"

#define CE_TYPE_BODY "ce_distill_template.h"
#include "ce_isa_list.h"
#undef CE_TYPE_BODY
