// A weight matrix as the linear ops take it: its data in the storage format chosen when the model was loaded
// (Backend::pack_weight), the logical shape [out, in], and which part of the full matrix a tensor-parallel rank
// holds. Quantized formats add their scales (and zero points) here, so adding one is a packer in pack_weight and
// a kernel per ISA behind Kernels::linear; no layer above changes.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace oar {

// Built today: the dense float formats ([out, in] in that dtype) and PaddleNLP's weight-only types and a8w8:
//   Int8 (weight_only_int8): int8 [out, in], one float32 scale per output channel (symmetric absmax,
//        w ~= data * scale);
//   Int4 (weight_only_int4): two 4-bit values a byte, [out, in / 2] uint8, one float32 scale per group of
//        group_size inputs of a row, [out, in / group_size] (group_size = in: per channel). Symmetric: q
//        stored as q + 8, w ~= q * scale; quantize_int4 writes q in [-7, 7], GGUF's Q4_0 (repacked as it is)
//        may also hold -8. In each block of 32 inputs, byte j holds input j in its low
//        nibble and input j + 16 in its high one, so a vector unpacks 16 consecutive inputs per nibble half.
//   A8W8 (PaddleNLP's a8w8): Int8's weights and scales, and the activations quantized to int8 as well, so that
//        the product is an integer dot (VNNI's vpdpbusd): x ~= qx * step with step = act_step (a static
//        per-tensor step, absmax / 127 from calibration) or, where act_step is 0, max|x| / 127 of each row (a
//        dynamic per-token step). row_sums holds each row's sum of int8 weights, int32 [out]: the kernels feed
//        the activations as unsigned bytes qx + 128 (vpdpbusd multiplies u8 by s8) and subtract 128 * the sum.
enum class WeightFormat : uint8_t { F32, BF16, F16, Int8, Int4, A8W8 };
const char* weight_format_name(WeightFormat f);  // Int8: "weight_only_int8", as PaddleNLP's --quant_type
// The format weight_format_name gives `name`; false for any other name.
bool weight_format_of(const std::string& name, WeightFormat& out);
bool is_quantized(WeightFormat f);

// What load-time quantization makes of the projections: the format and, for Int4, the group size (-1: one group
// per output channel, PaddleNLP's weightonly_group_size default; else 64 or 128). A8W8 takes each projection's
// static activation step from act_steps (by weight name: PaddleNLP's act_scales.json) where given, else its
// activations get dynamic per-token steps.
struct QuantSpec {
  QuantSpec(WeightFormat f = WeightFormat::Int8, int64_t group = -1) : format(f), group_size(group) {}
  WeightFormat format;
  int64_t group_size;
  std::shared_ptr<const std::map<std::string, float>> act_steps;
  float act_step = 0;  // the one weight's step that Weight::quantize applies (the loader sets it from act_steps)
};
// PaddleNLP's --quant_type (weight_only_int8, weight_only_int4, a8w8, a8w8c8) and --weightonly_group_size (-1, 64,
// 128; only weight_only_int4 takes groups). Throws oar::Error naming the flag for bad values.
QuantSpec parse_quant_type(const std::string& name, int64_t group_size = -1);
// The dense format of a dtype (F32, BF16, F16; throws for others), and back.
WeightFormat dense_format(DType dtype);
DType dense_dtype(WeightFormat format);

// Which part of the full [full_out, full_in] matrix this weight holds: all of it, or rows [offset, offset + out)
// (a column-parallel linear's shard) or columns [offset, offset + in) (a row-parallel one).
struct WeightShard {
  enum Split : uint8_t { None, Rows, Cols } split = None;
  int64_t offset = 0;
  int64_t full_out = 0, full_in = 0;
};

// The largest |x| of n floats, and whether every one is finite (std::max alone would skip a NaN): what the
// quantizers of weights and activations measure a row by.
float row_absmax(const float* x, int64_t n, bool* finite);

struct Weight {
  Tensor data;                 // dense formats: [out, in] of the format's dtype, contiguous
  Tensor scales, zero_points;  // quantized formats only
  Tensor row_sums;             // A8W8 only
  WeightFormat format = WeightFormat::F32;
  int64_t out = 0, in = 0;     // logical shape
  int64_t group_size = 0;      // group-wise formats only
  float act_step = 0;          // A8W8: the static activation step; 0: dynamic per token
  WeightShard shard;

  bool defined() const { return data.defined(); }
  Device device() const { return data.device(); }
  // Bytes a product streams: data, scales, zero points and row sums.
  size_t bytes() const;
  // A dense [out, in] float tensor as a weight of its dtype's format, sharing its memory.
  static Weight dense(const Tensor& t);
  // weight_only_int8 of a float [out, in] matrix on the host: per output row, scale = max|w| / 127 and
  // data = round(w / scale) (an all-zero row gets scale 0 and zeros). Non-finite values are an oar::Error.
  static Weight quantize_int8(const Tensor& host);
  // weight_only_int4 on the host: per group of group_size inputs (-1: the whole row), scale = max|w| / 7 and
  // q = round(w / scale). `in` must be a multiple of 32 and of the group size.
  static Weight quantize_int4(const Tensor& host, int64_t group_size);
  // a8w8 on the host: quantize_int8's weights and scales, their row sums, and the activation step (0: dynamic).
  static Weight quantize_a8w8(const Tensor& host, float act_step = 0);
  // A weight from parts already in `format`'s layout (a file that stores it so: GGUF's Q4_0, oar export's packed
  // file), shape [out, in]. Every part's dtype and shape is checked against the format, so that no kernel reads
  // past a part; throws oar::Error saying which part is wrong. The parts are shared, not copied.
  static Weight assemble(WeightFormat format, int64_t out, int64_t in, Tensor data, Tensor scales, Tensor row_sums,
                         int64_t group_size, float act_step);
  // One of the three, as `spec` says.
  static Weight quantize(const Tensor& host, const QuantSpec& spec);
  // The float32 [out, in] matrix a host weight stands for (quantized formats: data * scale; A8W8: its weights
  // only, the activations' rounding is the kernels'), for tests and for products that have no kernel of their own.
  Tensor dequantize() const;
  // Rows [r0, r1) of a quantized or float16 weight in host memory as float32, written as [r1 - r0, in] at `out`.
  void dequantize_rows(int64_t r0, int64_t r1, float* out) const;
};

}  // namespace oar
