#include "kernels/backend.h"

#include "core/error.h"

namespace oar {

Weight Backend::pack_weight(const Tensor& host, const QuantSpec& spec) {
  if (host.ndim() != 2) throw Error("pack_weight: a weight is a [out, in] matrix, got shape " + shape_str(host.shape()));
  if (is_quantized(spec.format)) {
    Weight w = Weight::quantize(host, spec);  // quantized at load from any float checkpoint: no calibration
    w.data = upload(w.data);
    w.scales = upload(w.scales);
    return w;
  }
  const DType want = dense_dtype(spec.format);
  return Weight::dense(upload(host.dtype() == want ? host : host.to(want)));
}

void Backend::check_copy(const Tensor& src, const Tensor& dst) const {
  for (const Tensor* t : {&src, &dst})
    if (t->device() != device())
      throw Error(std::string(name()) + " backend: copy of a tensor on " + device_name(t->device()));
  if (src.dtype() != dst.dtype() || src.numel() != dst.numel() || !src.is_contiguous() || !dst.is_contiguous())
    throw Error(std::string(name()) + " backend: copy needs contiguous tensors of one dtype and size");
}

}  // namespace oar
