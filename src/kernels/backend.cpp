#include "kernels/backend.h"

#include "core/error.h"

namespace oar {

Weight Backend::pack_weight(const Tensor& host, const QuantSpec& spec) {
  if (host.ndim() != 2) throw Error("pack_weight: a weight is a [out, in] matrix, got shape " + shape_str(host.shape()));
  // Quantized at load from any float checkpoint: no calibration.
  if (is_quantized(spec.format)) return upload_weight(Weight::quantize(host, spec));
  const DType want = dense_dtype(spec.format);
  return Weight::dense(upload(host.dtype() == want ? host : host.to(want)));
}

Weight Backend::upload_weight(Weight host) {
  for (Tensor* t : {&host.data, &host.scales, &host.zero_points, &host.row_sums})
    if (t->defined()) *t = upload(*t);
  return host;
}

void Backend::check_copy(const Tensor& src, const Tensor& dst) const {
  for (const Tensor* t : {&src, &dst})
    if (t->device() != device())
      throw Error(std::string(name()) + " backend: copy of a tensor on " + device_name(t->device()));
  if (src.dtype() != dst.dtype() || src.numel() != dst.numel() || !src.is_contiguous() || !dst.is_contiguous())
    throw Error(std::string(name()) + " backend: copy needs contiguous tensors of one dtype and size");
}

}  // namespace oar
