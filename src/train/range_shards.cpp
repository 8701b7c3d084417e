#include "train/range_shards.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/error.h"

namespace oar {

std::unique_ptr<RangeShards> RangeShards::make(const std::vector<Parameter*>& params, Communicator& group) {
  if (group.size() < 2 || params.empty()) return nullptr;
  const auto addr = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); };
  const uintptr_t g0 = addr(params[0]->grad), v0 = addr(params[0]->value);
  std::vector<int64_t> offsets;
  int64_t end = 0;
  bool one_span = true;
  for (Parameter* p : params) {
    if (p->value.device() != Device::CPU || !p->grad.is_contiguous() || !p->value.is_contiguous() ||
        addr(p->grad) < g0 || (addr(p->grad) - g0) % sizeof(float) != 0) {
      one_span = false;
      break;
    }
    const int64_t at = int64_t((addr(p->grad) - g0) / sizeof(float));
    // In order, after the previous one with at most a slot's padding (16 floats) between, the weight at the same
    // offset in its buffer: otherwise the span would take in memory that is not a trainable parameter's.
    if (at < end || at - end >= 16 || addr(p->value) < v0 || addr(p->value) - v0 != uintptr_t(at) * sizeof(float)) {
      one_span = false;
      break;
    }
    offsets.push_back(at);
    end = at + p->grad.numel();
  }
  // Every rank takes the same path (their collectives must match).
  double any_not = one_span ? 0 : 1;
  group.all_reduce(&any_not, 1, ReduceOp::Max);
  if (any_not != 0) return nullptr;
  return std::unique_ptr<RangeShards>(new RangeShards(params, group, reinterpret_cast<float*>(g0),
                                                      reinterpret_cast<float*>(v0), end, std::move(offsets)));
}

RangeShards::RangeShards(const std::vector<Parameter*>& params, Communicator& group, float* grads, float* values,
                         int64_t span, std::vector<int64_t> offsets)
    : params_(params), group_(group), grads_(grads), values_(values), offsets_(std::move(offsets)) {
  const int n = group.size();
  // Ranges of equal size, each starting on a 64-byte boundary of the span (the last takes the rest).
  const int64_t per = span / n / 16 * 16;
  for (int k = 0; k < n; k++) bounds_.push_back(per * k);
  bounds_.push_back(span);
  for (size_t i = 0; i < params_.size(); i++) {
    const int64_t lo = offsets_[i], hi = lo + params_[i]->grad.numel();
    for (int k = 0; k < n; k++) {
      const int64_t b = std::max(lo, bounds_[size_t(k)]), e = std::min(hi, bounds_[size_t(k) + 1]);
      if (b < e) all_pieces_.push_back({i, k, b - lo, e - lo});
    }
  }
  for (const Piece& pc : all_pieces_) {
    if (pc.rank != group.rank()) continue;
    const Parameter& p = *params_[pc.param];
    Parameter piece;
    piece.name = p.name;
    piece.value = p.value.view({p.value.numel()}).slice0(pc.begin, pc.end);
    piece.grad = p.grad.view({p.grad.numel()}).slice0(pc.begin, pc.end);
    mine_.push_back(std::move(piece));
  }
  for (Parameter& p : mine_) piece_ptrs_.push_back(&p);
}

void RangeShards::reduce_scatter_grads() { ring_reduce_scatter(group_, grads_, bounds_); }

void RangeShards::all_gather_values() { ring_all_gather(group_, values_, bounds_); }

std::vector<std::pair<std::string, Tensor>> RangeShards::gather_moments(const AdamW& local) const {
  std::map<std::string, Tensor> own;
  for (auto& [name, t] : local.state_tensors()) own[name] = t;
  const int me = group_.rank();
  std::vector<std::pair<std::string, Tensor>> out;
  size_t first = 0;  // the pieces of parameter i are all_pieces_[first, last)
  for (size_t i = 0; i < params_.size(); i++) {
    size_t last = first;
    while (last < all_pieces_.size() && all_pieces_[last].param == i) last++;
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const std::string name = params_[i]->name + suffix;
      Tensor whole;
      if (me == 0) whole = Tensor::empty(params_[i]->value.shape(), DType::F32);
      for (size_t k = first; k < last; k++) {
        const Piece& pc = all_pieces_[k];
        const int64_t bytes = (pc.end - pc.begin) * int64_t(sizeof(float));
        if (me == 0) {
          float* to = whole.data<float>() + pc.begin;
          if (pc.rank == 0) std::memcpy(to, own.at(name).raw(), size_t(bytes));
          else group_.recv(to, bytes, pc.rank);
        } else if (pc.rank == me) {
          group_.send(own.at(name).raw(), bytes, 0);
        }
      }
      if (me == 0) out.emplace_back(name, whole);
    }
    first = last;
  }
  return out;
}

std::map<std::string, Tensor> RangeShards::pieces_of(const std::map<std::string, Tensor>& whole,
                                                     const std::string& where) const {
  // Every parameter's moments checked on every rank (not only those of its pieces), so that the ranks fail
  // together.
  for (const Parameter* p : params_)
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      auto it = whole.find(p->name + suffix);
      if (it == whole.end()) fail(where, "missing optimizer state '" + p->name + suffix + "'");
      if (it->second.shape() != p->value.shape())
        fail(where, "optimizer state '" + it->first + "' has shape " + shape_str(it->second.shape()) +
                        ", the parameter " + shape_str(p->value.shape()));
    }
  std::map<std::string, Tensor> out;
  for (const Piece& pc : all_pieces_) {
    if (pc.rank != group_.rank()) continue;
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const std::string name = params_[pc.param]->name + suffix;
      const Tensor& t = whole.at(name);
      out[name] = t.contiguous().view({t.numel()}).slice0(pc.begin, pc.end);
    }
  }
  return out;
}

}  // namespace oar
