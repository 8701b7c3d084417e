// `oar env`: the devices, as nvidia-smi / hy-smi list them, and what oar uses on each.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/commands.h"
#include "core/cpu_info.h"
#include "kernels/kernels.h"

namespace oar::cli {
namespace {

// What idle OpenMP threads do at a barrier, as libgomp was told (main() sets oar's default).
std::string openmp_wait_policy() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  std::string s;
  if (policy) s += std::string("OMP_WAIT_POLICY=") + policy;
  if (spin) s += std::string(s.empty() ? "" : ", ") + "spin " + spin + " iterations, then sleep (GOMP_SPINCOUNT)";
  return s.empty() ? "libgomp's default" : s;
}

}  // namespace

Action add_env(CLI::App& app) {
  return [] {
    const CpuInfo& c = cpu_info();
    auto yn = [](bool b) { return b ? "yes" : "no"; };
    std::printf("oar %s\n", OAR_VERSION);
    std::printf("+-----------------------------------------------------------------------------+\n");
    std::printf("| Device 0: CPU                                                               |\n");
    std::printf("+-----------------------------------------------------------------------------+\n");
    std::printf("  model            : %s\n", c.model_name.c_str());
    std::printf("  logical cores    : %d (oar threads: %d)\n", c.logical_cpus, omp_get_max_threads());
    std::printf("  memory           : %.1f GiB total, %.1f GiB available\n", double(c.mem_total_bytes) / (1 << 30),
                double(c.mem_available_bytes) / (1 << 30));
    std::printf("  caches           : L2 %s per core, L3 %s\n", c.l2_cache.c_str(), c.l3_cache.c_str());
    std::printf("  ISA              : avx2 %s, fma %s, avx512 (f/bw/dq/vl) %s, avx512_bf16 %s, avx512_vnni %s, amx_bf16 %s\n",
                yn(c.avx2), yn(c.fma), yn(c.has_avx512()), yn(c.avx512_bf16), yn(c.avx512_vnni), yn(c.amx_bf16));
    std::printf("  kernels in use   : %s (GEMM: oneDNN matmul; bf16 GEMM %s)\n", kernels_for(Device::CPU).name(),
                c.avx512_bf16 ? "on AVX512_BF16 units" : "emulated by oneDNN or GEMV fallback");
    std::printf("  OpenMP waiting   : %s\n", openmp_wait_policy().c_str());
    std::printf("+-----------------------------------------------------------------------------+\n");
    std::printf("  GPUs             : none (this build has no CUDA backend)\n");
    return 0;
  };
}

}  // namespace oar::cli
