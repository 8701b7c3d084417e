// PaddleNLP's sharding stage1 (ZeRO-1, Paddle's DygraphShardingOptimizer): the optimizer state is split over the
// ranks of the sharding group. Parameters are dealt whole, in order, each to the rank holding the fewest elements
// so far; a rank keeps AdamW moments for its own parameters only and updates only those, and then every parameter
// is broadcast from its owner. The gradients are averaged over every rank before, as with data parallelism, so
// the weights after each step are those of data parallelism (and of one process with the global batch).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/communicator.h"
#include "core/tensor.h"
#include "train/optimizer.h"
#include "train/trainable_llama.h"

namespace oar {

class ParameterShards {
 public:
  // `group` null (or of size 1): one rank owns everything.
  ParameterShards(const std::vector<Parameter*>& params, Communicator* group);

  const std::vector<Parameter*>& all() const { return all_; }
  const std::vector<Parameter*>& owned() const { return owned_; }
  bool sharded() const { return group_ != nullptr; }

  // After the owners' optimizer step: every rank holds every updated parameter.
  void broadcast_from_owners();
  // Every parameter's moments ("<name>.exp_avg", "<name>.exp_avg_sq", in all() order) on rank 0, sent there by
  // their owners, for a checkpoint; other ranks get an empty list. Every rank of the group must call it.
  std::vector<std::pair<std::string, Tensor>> gather_moments(const AdamW& local) const;

 private:
  std::vector<Parameter*> all_, owned_;
  std::vector<int> owner_;
  Communicator* group_ = nullptr;
};

}  // namespace oar
