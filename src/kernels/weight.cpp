#include "kernels/weight.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"

namespace oar {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "float32";
    case WeightFormat::BF16: return "bfloat16";
    case WeightFormat::F16: return "float16";
    case WeightFormat::Int8: return "weight_only_int8";
    case WeightFormat::Int4: return "weight_only_int4";
    case WeightFormat::A8W8: return "a8w8";
  }
  return "?";
}

bool weight_format_of(const std::string& name, WeightFormat& out) {
  for (WeightFormat f : {WeightFormat::F32, WeightFormat::BF16, WeightFormat::F16, WeightFormat::Int8, WeightFormat::Int4,
                         WeightFormat::A8W8})
    if (name == weight_format_name(f)) {
      out = f;
      return true;
    }
  return false;
}

QuantSpec parse_quant_type(const std::string& name, int64_t group_size) {
  QuantSpec q;
  if (name == "weight_only_int8") q.format = WeightFormat::Int8;
  else if (name == "weight_only_int4") q.format = WeightFormat::Int4;
  else if (name == "a8w8" || name == "a8w8c8")  // a8w8c8's int8 KV cache: the CLI's parse_cachekv_int8
    q.format = WeightFormat::A8W8;
  else
    throw Error("--quant_type: '" + name + "' is not a quantization type (weight_only_int8, weight_only_int4, a8w8, a8w8c8)");
  if (group_size != -1 && group_size != 64 && group_size != 128)
    throw Error("--weightonly_group_size: " + std::to_string(group_size) + " is not supported (-1, 64 or 128)");
  if (q.format != WeightFormat::Int4 && group_size != -1)
    throw Error("--weightonly_group_size " + std::to_string(group_size) + ": " + name + " is per channel only (-1)");
  q.group_size = group_size;
  return q;
}

bool is_quantized(WeightFormat f) {
  return f == WeightFormat::Int8 || f == WeightFormat::Int4 || f == WeightFormat::A8W8;
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
    case WeightFormat::Int8:
    case WeightFormat::Int4:
    case WeightFormat::A8W8: break;
  }
  throw Error("weight format " + std::to_string(int(format)) + " has no dense dtype");
}

size_t Weight::bytes() const {
  size_t b = data.defined() ? data.nbytes() : 0;
  if (scales.defined()) b += scales.nbytes();
  if (zero_points.defined()) b += zero_points.nbytes();
  if (row_sums.defined()) b += row_sums.nbytes();
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

float row_absmax(const float* x, int64_t n, bool* finite) {
  float amax = 0;
  bool ok = true;
  for (int64_t k = 0; k < n; k++) {
    amax = std::max(amax, std::fabs(x[k]));
    ok = ok && std::isfinite(x[k]);
  }
  *finite = ok;
  return amax;
}

namespace {

// The integer dots of a8w8 are exact in int32 up to 65536 inputs (at most 255 * 128 per product; kernels/cpu/isa.h).
void check_a8w8_width(int64_t in) {
  if (in > 65536)
    throw Error("a8w8: a weight " + std::to_string(in) + " inputs wide would overflow the int32 dot (at most 65536)");
}

}  // namespace

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
    bool finite;
    float amax = row_absmax(row, in, &finite);
    if (!finite) {  // zeros (a NaN must not reach the int8 conversion), refused below
#pragma omp critical(oar_quantize_bad_row)
      bad_row = std::max(bad_row, r);
      sc[r] = 0;
      std::fill(q + r * in, q + (r + 1) * in, int8_t(0));
      continue;
    }
    if (amax < FLT_MIN) amax = 0;  // below the normal floats 127 / amax overflows: such a row is zero
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

Weight Weight::quantize_int4(const Tensor& host, int64_t group_size) {
  if (host.ndim() != 2) throw Error("weight: quantizing needs a [out, in] matrix, got shape " + shape_str(host.shape()));
  const int64_t out = host.dim(0), in = host.dim(1), g = group_size == -1 ? in : group_size;
  if (in % 32 != 0 || g <= 0 || in % g != 0 || g % 32 != 0)
    throw Error("weight_only_int4: a " + shape_str(host.shape()) + " weight cannot be split into groups of " +
                std::to_string(g) + " (the input width must be a multiple of 32 and of the group size)");
  const Tensor f = host.dtype() == DType::F32 ? host.contiguous() : host.to(DType::F32);
  Weight w;
  w.format = WeightFormat::Int4;
  w.out = out;
  w.in = in;
  w.group_size = g;
  w.data = Tensor::empty({out, in / 2}, DType::U8);
  w.scales = Tensor::empty({out, in / g}, DType::F32);
  const float* src = f.data<float>();
  uint8_t* q = w.data.data<uint8_t>();
  float* sc = w.scales.data<float>();
  int64_t bad_row = -1;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < out; r++) {
    for (int64_t g0 = 0; g0 < in; g0 += g) {
      const float* x = src + r * in + g0;
      bool finite;
      float amax = row_absmax(x, g, &finite);
      if (!finite) {
#pragma omp critical(oar_quantize_bad_row)
        bad_row = std::max(bad_row, r);
        sc[r * (in / g) + g0 / g] = 0;  // zeros (q + 8 = 8 in both nibbles), refused below
        std::fill(q + r * (in / 2) + g0 / 2, q + r * (in / 2) + (g0 + g) / 2, uint8_t(0x88));
        continue;
      }
      if (amax < FLT_MIN) amax = 0;  // as in quantize_int8
      sc[r * (in / g) + g0 / g] = amax / 7.0f;
      const float inv = amax > 0 ? 7.0f / amax : 0.0f;
      for (int64_t k = 0; k < g; k += 32) {
        uint8_t* b = q + r * (in / 2) + (g0 + k) / 2;
        for (int j = 0; j < 16; j++) {
          const int lo = int(std::clamp(std::nearbyint(x[k + j] * inv), -7.0f, 7.0f)) + 8;
          const int hi = int(std::clamp(std::nearbyint(x[k + j + 16] * inv), -7.0f, 7.0f)) + 8;
          b[j] = uint8_t(lo | (hi << 4));
        }
      }
    }
  }
  if (bad_row >= 0)
    throw Error("weight_only_int4: row " + std::to_string(bad_row) + " of a " + shape_str(host.shape()) +
                " weight holds a value that is not finite");
  return w;
}

Weight Weight::quantize_a8w8(const Tensor& host, float act_step) {
  if (!(act_step >= 0) || !std::isfinite(act_step))
    throw Error("a8w8: the activation step must be finite and not negative, got " + std::to_string(act_step));
  if (host.ndim() == 2) check_a8w8_width(host.dim(1));
  Weight w = quantize_int8(host);
  w.format = WeightFormat::A8W8;
  w.act_step = act_step;
  w.row_sums = Tensor::empty({w.out}, DType::I32);
  const int8_t* q = w.data.data<int8_t>();
  for (int64_t r = 0; r < w.out; r++) {
    int32_t sum = 0;
    for (int64_t k = 0; k < w.in; k++) sum += q[r * w.in + k];
    w.row_sums.data<int32_t>()[r] = sum;
  }
  return w;
}

namespace {

// A part of an assembled weight must be a contiguous tensor of this dtype and shape.
void check_part(const char* part, const Tensor& t, DType dtype, const Shape& shape, WeightFormat format) {
  const std::string what = std::string(weight_format_name(format)) + " weight's " + part;
  if (!t.defined()) throw Error(what + " is missing");
  if (t.dtype() != dtype || t.shape() != shape || !t.is_contiguous())
    throw Error(what + " is " + dtype_name(t.dtype()) + " " + shape_str(t.shape()) + ", expected " + dtype_name(dtype) +
                " " + shape_str(shape));
}

}  // namespace

Weight Weight::assemble(WeightFormat format, int64_t out, int64_t in, Tensor data, Tensor scales, Tensor row_sums,
                        int64_t group_size, float act_step) {
  Weight w;
  w.format = format;
  w.out = out;
  w.in = in;
  const bool int4 = format == WeightFormat::Int4;
  if (int4 && (in % 32 != 0 || group_size <= 0 || group_size % 32 != 0 || in % group_size != 0))
    throw Error("weight_only_int4: a weight " + std::to_string(in) + " inputs wide cannot have groups of " +
                std::to_string(group_size));
  if (is_quantized(format)) {
    check_part("data", data, int4 ? DType::U8 : DType::I8, {out, int4 ? in / 2 : in}, format);
    check_part("scales", scales, DType::F32, int4 ? Shape{out, in / group_size} : Shape{out}, format);
  } else {
    check_part("data", data, dense_dtype(format), {out, in}, format);
  }
  if (format == WeightFormat::A8W8) {
    check_a8w8_width(in);
    check_part("row sums", row_sums, DType::I32, {out}, format);
    if (!(act_step >= 0) || !std::isfinite(act_step))
      throw Error("a8w8: the activation step must be finite and not negative, got " + std::to_string(act_step));
    // A row of int8 weights sums to at most 128 * in in size; a larger one would overflow the kernels' int32.
    const int32_t* rs = row_sums.data<int32_t>();
    for (int64_t r = 0; r < out; r++)
      if (rs[r] > 128 * in || rs[r] < -128 * in)
        throw Error("a8w8 weight's row sum " + std::to_string(rs[r]) + " (row " + std::to_string(r) +
                    ") cannot be the sum of " + std::to_string(in) + " int8 weights");
  }
  w.data = std::move(data);
  if (is_quantized(format)) w.scales = std::move(scales);
  if (format == WeightFormat::A8W8) {
    w.row_sums = std::move(row_sums);
    w.act_step = act_step;
  }
  if (int4) w.group_size = group_size;
  return w;
}

Weight Weight::quantize(const Tensor& host, const QuantSpec& spec) {
  if (spec.format == WeightFormat::Int4) return quantize_int4(host, spec.group_size);
  if (spec.format == WeightFormat::Int8) return quantize_int8(host);
  if (spec.format == WeightFormat::A8W8) return quantize_a8w8(host, spec.act_step);
  throw Error(std::string("weight: ") + weight_format_name(spec.format) + " is not a quantized format");
}

void Weight::dequantize_rows(int64_t r0, int64_t r1, float* d) const {
  const int64_t K = in;
  if (format == WeightFormat::F16) {
    const uint16_t* h = data.data<uint16_t>() + r0 * K;
    for (int64_t j = 0; j < (r1 - r0) * K; j++) d[j] = f16_to_f32(h[j]);
    return;
  }
  const float* sc = scales.data<float>();
  if (format == WeightFormat::Int8 || format == WeightFormat::A8W8) {
    const int8_t* q = data.data<int8_t>();
    for (int64_t r = r0; r < r1; r++, d += K)
      for (int64_t k = 0; k < K; k++) d[k] = float(q[r * K + k]) * sc[r];
    return;
  }
  if (format != WeightFormat::Int4) throw Error(std::string("weight: ") + weight_format_name(format) + " has no row conversion");
  const int64_t G = group_size;
  for (int64_t r = r0; r < r1; r++, d += K) {
    const uint8_t* q = data.data<uint8_t>() + r * (K / 2);
    for (int64_t k = 0; k < K; k += 32) {  // the block layout of WeightFormat::Int4
      const float s = sc[r * (K / G) + k / G];
      for (int j = 0; j < 16; j++) {
        d[k + j] = float(int(q[k / 2 + j] & 15) - 8) * s;
        d[k + j + 16] = float(int(q[k / 2 + j] >> 4) - 8) * s;
      }
    }
  }
}

Tensor Weight::dequantize() const {
  if (!is_quantized(format)) return data.to(DType::F32);
  Tensor f = Tensor::empty({out, in}, DType::F32);
  dequantize_rows(0, out, f.data<float>());
  return f;
}

}  // namespace oar
