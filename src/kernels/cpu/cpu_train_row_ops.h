// The row kernels of the CPU training kernels: the loops that exp() or reduce (softmax, cross-entropy, SwiGLU,
// RMSNorm, rotary embedding), one row at a time, compiled once per instruction set (cpu_train_row_ops.cpp).
#pragma once
#include <cstdint>

#include "kernels/cpu/isa.h"

namespace oar::cpu {

struct RowOps {
  void (*softmax_masked)(float*, int64_t, int64_t, int64_t, int64_t);
  void (*softmax_backward)(const float*, float*, int64_t, float);
  void (*cross_entropy)(float*, int64_t, int32_t, float, bool, double*, uint8_t*);
  void (*swiglu_forward)(const float*, const float*, float*, int64_t);
  void (*swiglu_backward)(const float*, const float*, const float*, float*, float*, int64_t);
  float (*rmsnorm_forward)(const float*, const float*, float, float*, int64_t);
  void (*rmsnorm_backward)(const float*, const float*, const float*, float, float*, float*, int64_t);
  void (*rope)(float*, const float*, const float*, int64_t, int64_t, float, bool);
};

// The row kernels for the instruction set the ISA table chose.
const RowOps& row_ops_for(const IsaOps& isa);

}  // namespace oar::cpu
