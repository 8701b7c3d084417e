// Ceilings measured on this machine, so speed can be stated as a fraction of what the hardware allows.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace oar {

// Read bandwidth in bytes/s: every core streams through its share of a buffer much larger than the caches
// (the median of several passes).
double measure_read_bandwidth(size_t buffer_bytes = size_t(1) << 30);
// GEMM throughput in FLOP/s of our GEMM path (oneDNN) for an M x N x K product in `dtype` (best of several runs).
double measure_gemm_flops(DType dtype, int64_t M, int64_t N, int64_t K);

}  // namespace oar
