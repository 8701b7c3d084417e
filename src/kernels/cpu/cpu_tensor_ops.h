// The CPU's whole-tensor, row and optimizer ops of the training kernel interface (training_kernels.h), apart from
// the layers' kernels in cpu_training_kernels.cpp.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "kernels/training_kernels.h"

namespace oar::cpu {

void zero(Tensor& x);
void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst);
void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst);
void adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWUpdate& u);
double sum_squares(const Tensor& x, double total);
void scale(Tensor& x, float s);
bool all_finite(const Tensor& x);

}  // namespace oar::cpu
