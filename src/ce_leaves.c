/*
 * The chunk kernels for every element type, compiled for each instruction
 * set the build can target. Which one runs is decided at run time
 * (ce_kernels.c), so one binary runs on any x86-64 and uses AVX-512 where
 * the CPU has it.
 */
#include <math.h>

#include "ce_internal.h"
#include "ce_math.h"

#define CE_TYPE_BODY "ce_leaf_template.h"
#include "ce_isa_list.h"
#undef CE_TYPE_BODY

