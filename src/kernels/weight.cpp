#include "kernels/weight.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace oar {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "float32";
    case WeightFormat::BF16: return "bfloat16";
    case WeightFormat::F16: return "float16";
    case WeightFormat::Int8: return "weight_only_int8";
  }
  return "?";
}

WeightFormat parse_quant_type(const std::string& name) {
  if (name == "weight_only_int8") return WeightFormat::Int8;
  if (name == "weight_only_int4" || name == "a8w8" || name == "a8w8c8")
    throw Error("--quant_type " + name + " is not built yet (weight_only_int8 is)");
  throw Error("--quant_type: '" + name + "' is not a quantization type (weight_only_int8, weight_only_int4, a8w8, a8w8c8)");
}

bool is_quantized(WeightFormat f) { return f == WeightFormat::Int8; }

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
    case WeightFormat::Int8: break;
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

Weight Weight::quantize_int8(const Tensor& host) {
  if (host.ndim() != 2) throw Error("weight: quantizing needs a [out, in] matrix, got shape " + shape_str(host.shape()));
  const Tensor f = host.dtype() == DType::F32 ? host.contiguous() : host.to(DType::F32);
  const int64_t out = f.dim(0), in = f.dim(1);
  Weight w;
  w.format = WeightFormat::Int8;
  w.out = out;
  w.in = in;
  w.data = Tensor::empty({out, in}, DType::I8);
  w.scales = Tensor::empty({out}, DType::F32);
  const float* src = f.data<float>();
  int8_t* q = w.data.data<int8_t>();
  float* sc = w.scales.data<float>();
  int64_t bad_row = -1;  // a non-finite row has no scale: refused after the loop (no throw inside OpenMP)
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < out; r++) {
    const float* row = src + r * in;
    float amax = 0;
    bool finite = true;
    for (int64_t k = 0; k < in; k++) {
      amax = std::max(amax, std::fabs(row[k]));
      finite = finite && std::isfinite(row[k]);  // std::max would skip a NaN
    }
    if (!finite) {
#pragma omp critical(oar_quantize_bad_row)
      bad_row = std::max(bad_row, r);
      amax = 0;
    }
    sc[r] = amax / 127.0f;
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int64_t k = 0; k < in; k++)
      q[r * in + k] = int8_t(std::clamp(std::nearbyint(row[k] * inv), -127.0f, 127.0f));
  }
  if (bad_row >= 0)
    throw Error("weight_only_int8: row " + std::to_string(bad_row) + " of a " + shape_str(host.shape()) +
                " weight holds a value that is not finite");
  return w;
}

Tensor Weight::dequantize() const {
  if (!is_quantized(format)) return data.to(DType::F32);
  Tensor f = Tensor::empty({out, in}, DType::F32);
  const int8_t* q = data.data<int8_t>();
  const float* sc = scales.data<float>();
  float* d = f.data<float>();
  for (int64_t r = 0; r < out; r++)
    for (int64_t k = 0; k < in; k++) d[r * in + k] = float(q[r * in + k]) * sc[r];
  return f;
}

}  // namespace oar
