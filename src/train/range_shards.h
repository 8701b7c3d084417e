// Data parallelism's optimizer split by ranges over the data-parallel group (ZeRO stage 1 without PaddleNLP's
// sharding group, which deals whole parameters instead): the trainable gradients are one span of the flat gradient
// buffer and the weights one span of the flat weight buffer, at the same offsets. After the backward a ring
// reduce-scatter leaves each rank the sums of its 1/N of the gradient span; that rank's AdamW updates its part of
// every parameter the range crosses (pieces(): views under the parameters' names); a ring all-gather then gives
// every rank the whole weights. Each rank scales, measures and updates 1/N of the parameters, and sends what an
// all-reduce would. The weights after a step are those of the plain all-reduce, up to the order of the sums.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/communicator.h"
#include "core/tensor.h"
#include "train/optimizer.h"
#include "train/trainable_llama.h"

namespace oar {

class RangeShards {
 public:
  // null when the group has one rank, or when the parameters' gradients (and weights) are not one span in their
  // order (padding between slots allowed), e.g. host memory is not theirs.
  static std::unique_ptr<RangeShards> make(const std::vector<Parameter*>& params, Communicator& group);

  // This rank's part of each parameter its range crosses, in order: 1-D views of the weights and gradients.
  const std::vector<Parameter*>& pieces() { return piece_ptrs_; }
  Communicator& group() { return group_; }

  // The gradient sums of this rank's range, over the group (the rest of the span holds partial sums).
  void reduce_scatter_grads();
  // Every rank's updated range to every rank.
  void all_gather_values();
  // The whole moments ("<name>.exp_avg", "<name>.exp_avg_sq", in parameter order) on rank 0, from the pieces'
  // AdamW on every rank (which all must call it); other ranks get an empty list.
  std::vector<std::pair<std::string, Tensor>> gather_moments(const AdamW& local) const;
  // A checkpoint's whole moments cut to this rank's pieces (for AdamW::load_state on the pieces); a moment of
  // another size is an error naming `where`.
  std::map<std::string, Tensor> pieces_of(const std::map<std::string, Tensor>& whole, const std::string& where) const;

 private:
  struct Piece {
    size_t param;             // index into params_
    int rank;                 // whose range it is in
    int64_t begin, end;       // elements of the parameter
  };
  RangeShards(const std::vector<Parameter*>& params, Communicator& group, float* grads, float* values, int64_t span,
              std::vector<int64_t> offsets);

  std::vector<Parameter*> params_;
  Communicator& group_;
  float* grads_;
  float* values_;
  std::vector<int64_t> offsets_;  // each parameter's offset in the span
  std::vector<int64_t> bounds_;   // the ranks' ranges: rank k's is [bounds_[k], bounds_[k+1])
  std::vector<Piece> all_pieces_;  // every rank's, in parameter order
  std::vector<Parameter> mine_;
  std::vector<Parameter*> piece_ptrs_;
};

}  // namespace oar
