// Tensor parallelism (Megatron-LM's, as PaddleNLP's tensor_parallel_degree splits a Llama): the ranks of a tensor
// group hold parts of each large matrix. q/k/v/gate/up are split by rows (column-parallel: each rank computes some
// heads and some of the MLP's features), o/down by columns (row-parallel: each rank's partial product is summed
// over the group), the embedding and the LM head by vocabulary rows (vocab-parallel, with the cross-entropy
// combined over the group); the norms are whole on every rank. Parameter names stay the whole model's, and
// checkpoints hold whole tensors.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/communicator.h"
#include "core/tensor.h"

namespace oar {

// The dimension along which tensor parallelism splits the parameter `name` (Hugging Face name, or an optimizer
// moment "<name>.exp_avg"): 0 for q/k/v/gate/up (and their biases), the embedding and the LM head; 1 for o/down;
// -1 for the rest (norms, o_proj's bias, LoRA adapters), which every rank holds whole.
int tensor_split_dim(const std::string& name);

// Part `index` of `parts` equal parts of `whole` along `dim` (a host copy).
Tensor take_part(const Tensor& whole, int dim, int parts, int index);
// The whole tensor from every rank's part along `dim`, on every rank of `group`.
Tensor join_parts(Communicator& group, const Tensor& part, int dim);

// A rank's handle on its tensor group for the model's computation: sums that give every rank the same bits (each
// rank's part gathered, then added in rank order), whatever the MPI library's reduction order.
class TensorGroup {
 public:
  explicit TensorGroup(Communicator& group) : group_(group) {}
  int rank() const { return group_.rank(); }
  int size() const { return group_.size(); }
  Communicator& communicator() { return group_; }
  // values[0, n) reduced over the ranks (Sum in rank order, or Max).
  void combine(float* values, int64_t n, ReduceOp op);

 private:
  Communicator& group_;
  std::vector<float> gathered_;
};

}  // namespace oar
