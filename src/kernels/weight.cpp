#include "kernels/weight.h"

#include "core/error.h"

namespace oar {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "float32";
    case WeightFormat::BF16: return "bfloat16";
    case WeightFormat::F16: return "float16";
  }
  return "?";
}

WeightFormat dense_format(DType dtype) {
  switch (dtype) {
    case DType::F32: return WeightFormat::F32;
    case DType::BF16: return WeightFormat::BF16;
    case DType::F16: return WeightFormat::F16;
    default: throw Error(std::string("no weight format stores ") + dtype_name(dtype) + " values");
  }
}

DType dense_dtype(WeightFormat format) {
  switch (format) {
    case WeightFormat::F32: return DType::F32;
    case WeightFormat::BF16: return DType::BF16;
    case WeightFormat::F16: return DType::F16;
  }
  throw Error("weight format " + std::to_string(int(format)) + " has no dense dtype");
}

size_t Weight::bytes() const {
  size_t b = data.defined() ? data.nbytes() : 0;
  if (scales.defined()) b += scales.nbytes();
  if (zero_points.defined()) b += zero_points.nbytes();
  return b;
}

Weight Weight::dense(const Tensor& t) {
  if (t.ndim() != 2) throw Error("weight: a dense weight is a [out, in] matrix, got shape " + shape_str(t.shape()));
  Weight w;
  w.data = t;
  w.format = dense_format(t.dtype());
  w.out = t.dim(0);
  w.in = t.dim(1);
  return w;
}

}  // namespace oar
