// The CPU's kernel objects, one per Backend instance (each holds its own scratch buffers).
#pragma once
#include <memory>

#include "kernels/kernels.h"
#include "kernels/training_kernels.h"

namespace oar {

std::unique_ptr<Kernels> make_cpu_kernels();
std::unique_ptr<TrainKernels> make_cpu_train_kernels();

}  // namespace oar
