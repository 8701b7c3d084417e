#include "kernels/backend.h"

#include "core/error.h"

namespace oar {

Weight Backend::pack_weight(const Tensor& host, WeightFormat format) {
  if (host.ndim() != 2) throw Error("pack_weight: a weight is a [out, in] matrix, got shape " + shape_str(host.shape()));
  DType want = DType::F32;
  switch (format) {
    case WeightFormat::F32: want = DType::F32; break;
    case WeightFormat::BF16: want = DType::BF16; break;
    case WeightFormat::F16: want = DType::F16; break;
  }
  return Weight::dense(upload(host.dtype() == want ? host : host.to(want)));
}

}  // namespace oar
