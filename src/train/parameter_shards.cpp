#include "train/parameter_shards.h"

#include <algorithm>

#include "core/error.h"
#include "core/host_memory.h"

namespace oar {

ParameterShards::ParameterShards(const std::vector<Parameter*>& params, Communicator* group)
    : all_(params), group_(group && group->size() > 1 ? group : nullptr) {
  const int ranks = group_ ? group_->size() : 1, me = group_ ? group_->rank() : 0;
  std::vector<int64_t> held(size_t(ranks), 0);
  for (Parameter* p : all_) {
    if (p->value.device() != Device::CPU && group_)
      throw Error("sharding: the communicator moves host memory, but " + p->name + " is on " + device_name(p->value.device()));
    const int r = int(std::min_element(held.begin(), held.end()) - held.begin());
    held[size_t(r)] += p->value.numel();
    owner_of_[p] = r;
    if (r == me) owned_.push_back(p);
  }
}

void ParameterShards::reduce_grads_to_owners(const std::vector<Parameter*>& ps, Communicator* replicas,
                                             BackgroundSums* background) {
  if (!group_) return;
  for (Parameter* p : ps) {
    const int owner = owner_of_.at(p);
    float* g = p->grad.data<float>();
    const int64_t n = p->grad.numel();
    if (background) {
      background->start_reduce(*group_, g, n, owner, /*release_off_root=*/true);
    } else {
      group_->reduce(g, n, owner);
      if (owner != group_->rank()) zero_and_release(g, size_t(n) * sizeof(float));
    }
    if (owner != group_->rank() || !replicas) continue;
    if (background) background->start_all_reduce(*replicas, g, n);
    else replicas->all_reduce(g, n);
  }
}

void ParameterShards::release_others_grads() {
  if (!group_) return;
  for (Parameter* p : all_)
    if (owner_of_.at(p) != group_->rank()) zero_and_release(p->grad.raw(), p->grad.nbytes());
}

void ParameterShards::broadcast_from_owners() {
  if (!group_) return;
  for (Parameter* p : all_) group_->broadcast(p->value.raw(), int64_t(p->value.nbytes()), owner_of_.at(p));
}

std::vector<std::pair<std::string, Tensor>> ParameterShards::gather_moments(const AdamW& local) const {
  std::vector<std::pair<std::string, Tensor>> mine = local.state_tensors();
  if (!group_) return mine;
  std::map<std::string, Tensor> by_name(mine.begin(), mine.end());
  const int me = group_->rank();
  std::vector<std::pair<std::string, Tensor>> out;
  for (Parameter* p : all_) {
    const int owner = owner_of_.at(p);
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const std::string name = p->name + suffix;
      if (owner == me && me == 0) {
        out.emplace_back(name, by_name.at(name));
      } else if (owner == me) {
        const Tensor& t = by_name.at(name);
        group_->send(t.raw(), int64_t(t.nbytes()), 0);
      } else if (me == 0) {
        Tensor t = Tensor::empty(p->value.shape(), DType::F32);
        group_->recv(t.raw(), int64_t(t.nbytes()), owner);
        out.emplace_back(name, t);
      }
    }
  }
  return out;
}

}  // namespace oar
