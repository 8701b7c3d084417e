// A weight matrix as the linear ops take it: its data in the storage format chosen when the model was loaded
// (Backend::pack_weight), the logical shape [out, in], and which part of the full matrix a tensor-parallel rank
// holds. Quantized formats add their scales (and zero points) here, so adding one is a packer in pack_weight and
// a kernel per ISA behind Kernels::linear; no layer above changes.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace oar {

// Built today: the dense float formats ([out, in] in that dtype) and Int8, PaddleNLP's weight_only_int8: int8
// [out, in] with one float32 scale per output channel (symmetric absmax, w ~= data * scale). Next (the
// quantization issue): int4 group-wise (scales and zero points [out, in / group_size]) and a8w8.
enum class WeightFormat : uint8_t { F32, BF16, F16, Int8 };
const char* weight_format_name(WeightFormat f);  // Int8: "weight_only_int8", as PaddleNLP's --quant_type
// PaddleNLP's --quant_type names of the quantized formats oar builds ("weight_only_int8"); throws oar::Error
// naming the flag for the others (a8w8, weight_only_int4: not built yet) and for unknown names.
WeightFormat parse_quant_type(const std::string& name);
bool is_quantized(WeightFormat f);
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

struct Weight {
  Tensor data;                 // dense formats: [out, in] of the format's dtype, contiguous
  Tensor scales, zero_points;  // quantized formats only
  WeightFormat format = WeightFormat::F32;
  int64_t out = 0, in = 0;     // logical shape
  int64_t group_size = 0;      // group-wise formats only
  WeightShard shard;

  bool defined() const { return data.defined(); }
  Device device() const { return data.device(); }
  // Bytes a product streams: data, scales and zero points.
  size_t bytes() const;
  // A dense [out, in] float tensor as a weight of its dtype's format, sharing its memory.
  static Weight dense(const Tensor& t);
  // weight_only_int8 of a float [out, in] matrix on the host: per output row, scale = max|w| / 127 and
  // data = round(w / scale) (an all-zero row gets scale 0 and zeros).
  static Weight quantize_int8(const Tensor& host);
  // The float32 [out, in] matrix a host weight stands for (quantized formats: data * scale), for tests and for
  // products that have no kernel of their own.
  Tensor dequantize() const;
};

}  // namespace oar
