#include <cstdlib>
#include <string>

#include "core/cpu_info.h"
#include "core/error.h"
#include "kernels/cpu/isa.h"

namespace oar::cpu {

const IsaOps& isa_best() {
  static const IsaOps* chosen = [] {
    const CpuInfo& c = cpu_info();
    const char* force = std::getenv("OAR_ISA");
    std::string want = force ? force : "";
    if (want == "scalar") return &isa_scalar();
    if (want == "avx2") {
      if (!c.has_avx2()) throw Error("OAR_ISA=avx2: this CPU lacks AVX2/FMA/F16C");
      return &isa_avx2();
    }
    if (want == "avx512") {
      if (!c.has_avx512()) throw Error("OAR_ISA=avx512: this CPU lacks AVX-512 F/BW/DQ/VL");
      return &isa_avx512();
    }
    if (want == "avx512_vnni") {
      if (!c.has_avx512() || !c.avx512_vnni)
        throw Error("OAR_ISA=avx512_vnni: this CPU lacks AVX-512 F/BW/DQ/VL or AVX512_VNNI");
      return &isa_avx512_vnni();
    }
    if (want == "avx512_bf16") {
      if (!c.has_avx512() || !c.avx512_bf16 || !c.avx512_vnni)
        throw Error("OAR_ISA=avx512_bf16: this CPU lacks AVX-512 F/BW/DQ/VL, AVX512_BF16 or AVX512_VNNI");
      return &isa_avx512_bf16();
    }
    if (!want.empty())
      throw Error("OAR_ISA: unknown value '" + want + "' (expected scalar, avx2, avx512, avx512_vnni or avx512_bf16)");
    if (c.has_avx512() && c.avx512_bf16 && c.avx512_vnni) return &isa_avx512_bf16();
    if (c.has_avx512() && c.avx512_vnni) return &isa_avx512_vnni();
    if (c.has_avx512()) return &isa_avx512();
    if (c.has_avx2()) return &isa_avx2();
    return &isa_scalar();
  }();
  return *chosen;
}

}  // namespace oar::cpu

namespace oar {

uint64_t cpu_read_bytes(const void* p, size_t n) { return cpu::isa_best().read_bytes(p, n); }
const char* cpu_isa_name() { return cpu::isa_best().name; }

}  // namespace oar
