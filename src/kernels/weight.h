// A weight matrix as the linear ops take it: its data in the storage format chosen when the model was loaded
// (Backend::pack_weight), the logical shape [out, in], and which part of the full matrix a tensor-parallel rank
// holds. Quantized formats add their scales (and zero points) here, so adding one is a packer in pack_weight and
// a kernel per ISA behind Kernels::linear; no layer above changes.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace oar {

// Built today: the dense float formats ([out, in] in that dtype). Next (the quantization issue): int8 per output
// channel (scales [out]), int4 group-wise (scales and zero points [out, in / group_size]) and a8w8.
enum class WeightFormat : uint8_t { F32, BF16, F16 };
const char* weight_format_name(WeightFormat f);
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
};

}  // namespace oar
