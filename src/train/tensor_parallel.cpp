#include "train/tensor_parallel.h"

#include <cstring>

#include "core/error.h"

namespace oar {

int tensor_split_dim(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has(".lora_")) return -1;  // LoRA with tensor parallelism is not built: adapters are whole
  if (has("embed_tokens.") || has("lm_head.")) return 0;
  if (has(".q_proj.") || has(".k_proj.") || has(".v_proj.") || has(".gate_proj.") || has(".up_proj.")) return 0;
  if (has(".o_proj.weight") || has(".down_proj.weight")) return 1;
  return -1;
}

Tensor take_part(const Tensor& whole, int dim, int parts, int index) {
  const Tensor w = whole.contiguous();
  if (w.ndim() < 1 || dim < 0 || dim >= w.ndim() || w.dim(dim) % parts != 0)
    throw Error("tensor parallelism: " + shape_str(w.shape()) + " does not split into " + std::to_string(parts) +
                " parts along dimension " + std::to_string(dim));
  Shape shape = w.shape();
  shape[size_t(dim)] /= parts;
  Tensor out = Tensor::empty(shape, w.dtype());
  // rows: the product of the dimensions before `dim`; each row holds parts x block contiguous bytes.
  int64_t rows = 1;
  for (int d = 0; d < dim; d++) rows *= w.dim(d);
  const size_t block = out.nbytes() / size_t(rows);
  const auto* src = static_cast<const uint8_t*>(w.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (int64_t r = 0; r < rows; r++)
    std::memcpy(dst + size_t(r) * block, src + (size_t(r) * size_t(parts) + size_t(index)) * block, block);
  return out;
}

Tensor join_parts(Communicator& group, const Tensor& part0, int dim) {
  const Tensor part = part0.contiguous();
  if (part.dtype() != DType::F32) throw Error("tensor parallelism: joining " + std::string(dtype_name(part.dtype())) + " parts");
  const int parts = group.size();
  std::vector<float> all(size_t(part.numel()) * size_t(parts));
  group.all_gather(part.data<float>(), all.data(), part.numel());
  Shape shape = part.shape();
  shape[size_t(dim)] *= parts;
  Tensor out = Tensor::empty(shape, DType::F32);
  int64_t rows = 1;
  for (int d = 0; d < dim; d++) rows *= part.dim(d);
  const int64_t block = part.numel() / rows;
  for (int p = 0; p < parts; p++)
    for (int64_t r = 0; r < rows; r++)
      std::memcpy(out.data<float>() + (r * parts + p) * block, all.data() + p * part.numel() + r * block,
                  size_t(block) * sizeof(float));
  return out;
}

void TensorGroup::combine(float* values, int64_t n, ReduceOp op) {
  if (op == ReduceOp::Max) return group_.all_reduce(values, n, ReduceOp::Max);  // exact in any order
  gathered_.resize(size_t(n) * size_t(size()));
  group_.all_gather(values, gathered_.data(), n);
  std::memcpy(values, gathered_.data(), size_t(n) * sizeof(float));
  for (int r = 1; r < size(); r++)
    for (int64_t i = 0; i < n; i++) values[i] += gathered_[size_t(r) * size_t(n) + size_t(i)];
}

}  // namespace oar
