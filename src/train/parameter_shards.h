// PaddleNLP's sharding (Paddle's DygraphShardingOptimizer): stage1 splits the optimizer state over the ranks of the
// sharding group, stage2 the averaged gradients too. Parameters are dealt whole, in order, each to the rank holding
// the fewest elements so far; a rank keeps AdamW moments for its own parameters only and updates only those, and
// then every parameter is broadcast from its owner. The gradients are averaged over every rank before (stage1: an
// all-reduce, as data parallelism; stage2: a reduce to the owner), so the weights after each step are those of data
// parallelism (and of one process with the global batch), up to the order of the sums.
#pragma once
#include <map>
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

  // Sharding stage2: each gradient of `ps` summed over the group into its owner's buffer alone, then over
  // `replicas` (the ranks holding the same shard in the other data-parallel replicas; may be null). The other ranks'
  // buffers are left zeros, their memory given back to the OS (zero_and_release) until the next backward writes
  // them. With `background`, the sums are started there and this returns at once.
  void reduce_grads_to_owners(const std::vector<Parameter*>& ps, Communicator* replicas, BackgroundSums* background);
  // Stage2 before the first step: the gradients this rank does not own, zeros with their memory given back.
  void release_others_grads();
  // After the owners' optimizer step: every rank holds every updated parameter.
  void broadcast_from_owners();
  // Every parameter's moments ("<name>.exp_avg", "<name>.exp_avg_sq", in all() order) on rank 0, sent there by
  // their owners, for a checkpoint; other ranks get an empty list. Every rank of the group must call it.
  std::vector<std::pair<std::string, Tensor>> gather_moments(const AdamW& local) const;

 private:
  std::vector<Parameter*> all_, owned_;
  std::map<const Parameter*, int> owner_of_;
  Communicator* group_ = nullptr;
};

}  // namespace oar
