// What the processor and the machine offer: read once, used for kernel dispatch and `oar env`.
#pragma once
#include <cstdint>
#include <string>

namespace oar {

struct CpuInfo {
  std::string model_name;
  int logical_cpus = 1;
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false, avx512_vnni = false, amx_bf16 = false;
  uint64_t mem_total_bytes = 0, mem_available_bytes = 0;
  std::string l2_cache, l3_cache;

  bool has_avx512() const { return avx512f && avx512bw && avx512dq && avx512vl; }
  bool has_avx2() const { return avx2 && fma && f16c; }  // the AVX2 table converts float16 with F16C
};

const CpuInfo& cpu_info();
// Peak resident set size of this process so far, in bytes (from /proc/self/status VmHWM), less what
// forget_peak_rss_since excluded.
uint64_t peak_rss_bytes();
// Excludes from peak_rss_bytes what was resident since `peak_before` (a peak_rss_bytes() reading) and has been
// freed since: a measurement's own buffer (the bandwidth probe's 1 GiB) is not the program's memory. Resets the
// kernel's high-water mark to the current RSS (/proc/self/clear_refs); where that is refused, nothing changes.
void forget_peak_rss_since(uint64_t peak_before);

}  // namespace oar
