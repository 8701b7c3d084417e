#include "core/cpu_info.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <string>

namespace oar {
namespace {

std::string read_first(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

CpuInfo probe() {
  CpuInfo c;
  __builtin_cpu_init();
  c.sse42 = __builtin_cpu_supports("sse4.2");
  c.avx = __builtin_cpu_supports("avx");
  c.avx2 = __builtin_cpu_supports("avx2");
  c.fma = __builtin_cpu_supports("fma");
  c.avx512f = __builtin_cpu_supports("avx512f");
  c.avx512bw = __builtin_cpu_supports("avx512bw");
  c.avx512dq = __builtin_cpu_supports("avx512dq");
  c.avx512vl = __builtin_cpu_supports("avx512vl");
  c.avx512_vnni = __builtin_cpu_supports("avx512vnni");
  c.logical_cpus = int(sysconf(_SC_NPROCESSORS_ONLN));
  // /proc/cpuinfo carries the flags that gcc 12's __builtin_cpu_supports does not know (bf16, amx).
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    std::string val = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key.rfind("model name", 0) == 0 && c.model_name.empty()) c.model_name = val;
    if (key.rfind("flags", 0) == 0) {
      std::istringstream fs(" " + val + " ");
      std::string fl;
      while (fs >> fl) {
        if (fl == "avx512_bf16") c.avx512_bf16 = true;
        if (fl == "amx_bf16") c.amx_bf16 = true;
        if (fl == "f16c") c.f16c = true;
      }
    }
  }
  std::ifstream m("/proc/meminfo");
  while (std::getline(m, line)) {
    std::istringstream ls(line);
    std::string key;
    uint64_t kb = 0;
    ls >> key >> kb;
    if (key == "MemTotal:") c.mem_total_bytes = kb * 1024;
    if (key == "MemAvailable:") c.mem_available_bytes = kb * 1024;
  }
  c.l2_cache = read_first("/sys/devices/system/cpu/cpu0/cache/index2/size");
  c.l3_cache = read_first("/sys/devices/system/cpu/cpu0/cache/index3/size");
  return c;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = probe();
  return info;
}

namespace {
uint64_t vm_hwm_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream ls(line.substr(6));
      uint64_t kb = 0;
      ls >> kb;
      return kb * 1024;
    }
  }
  return 0;
}
std::atomic<uint64_t> g_peak_before_reset{0};  // the peak that a reset of VmHWM took away
}  // namespace

uint64_t peak_rss_bytes() { return std::max(g_peak_before_reset.load(), vm_hwm_bytes()); }

void forget_peak_rss_since(uint64_t peak_before) {
  std::ofstream f("/proc/self/clear_refs");
  if (!(f << "5" << std::flush)) return;  // not Linux, or refused: the peak keeps the measurement's memory
  uint64_t cur = g_peak_before_reset.load();
  while (cur < peak_before && !g_peak_before_reset.compare_exchange_weak(cur, peak_before)) {
  }
}

}  // namespace oar
