// The CPU kernels' ISA tables this machine can run, scalar first: what the per-ISA tests compare against the
// scalar table.
#pragma once
#include <vector>

#include "core/cpu_info.h"
#include "kernels/cpu/isa.h"

namespace oar::test {

inline std::vector<const cpu::IsaOps*> available_isas() {
  const CpuInfo& c = cpu_info();
  std::vector<const cpu::IsaOps*> v{&cpu::isa_scalar()};
  if (c.has_avx2()) v.push_back(&cpu::isa_avx2());
  if (c.has_avx512()) v.push_back(&cpu::isa_avx512());
  if (c.has_avx512() && c.avx512_vnni) v.push_back(&cpu::isa_avx512_vnni());
  if (c.has_avx512() && c.avx512_bf16 && c.avx512_vnni) v.push_back(&cpu::isa_avx512_bf16());
  return v;
}

}  // namespace oar::test
