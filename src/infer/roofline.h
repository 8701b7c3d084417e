// Ceilings measured on this machine, so speed can be stated as a fraction of what the hardware allows.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace oar {

// Read bandwidth in bytes/s: every core streams through its share of a buffer much larger than the caches with
// the widest loads of the kernels' ISA table (the median of several passes). The buffer does not count in
// peak_rss_bytes() afterwards.
double measure_read_bandwidth(size_t buffer_bytes = size_t(1) << 30);
// GEMM throughput in FLOP/s of our GEMM path (oneDNN) for an M x N x K product in `dtype` (I8: a8w8's u8 x s8
// integer product, in operations per second; best of several runs);
// 0 where this CPU has no GEMM for dtype.
double measure_gemm_flops(DType dtype, int64_t M, int64_t N, int64_t K);
// A share of a measured ceiling as "61.2%"; above 100% it says that the probe of `ceiling` ("bandwidth",
// "GEMM peak") is wrong instead of claiming a result.
std::string roofline_percent(double fraction, const char* ceiling = "bandwidth");

}  // namespace oar
