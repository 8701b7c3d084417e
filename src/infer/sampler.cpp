#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "core/error.h"

namespace oar {

void SamplingParams::validate() const {
  if (!std::isfinite(temperature) || temperature <= 0) throw Error("--temperature must be a positive number");
  if (!std::isfinite(top_p) || top_p < 0 || top_p > 1) throw Error("--top_p must be within [0, 1]");
  if (top_k < 0) throw Error("--top_k must not be negative");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0) throw Error("--repetition_penalty must be positive");
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

// Each stream (request) gets its own generator, so a request's tokens do not depend on what it is batched with.
Sampler::Sampler(const SamplingParams& p, uint64_t stream_id) : p_(p), rng_(p.seed * 0x9E3779B97F4A7C15ull + stream_id) {}

int32_t Sampler::next(float* logits, int64_t V, const std::vector<int32_t>& seen) {
  if (p_.repetition_penalty != 1.0) {
    std::unordered_set<int32_t> done;
    for (int32_t id : seen) {
      if (id < 0 || id >= V || !done.insert(id).second) continue;
      float& l = logits[id];
      l = l > 0 ? float(l / p_.repetition_penalty) : float(l * p_.repetition_penalty);
    }
  }
  // A temperature this small leaves all the mass on the top token (and 1/T would overflow float): greedy.
  if (p_.greedy || p_.temperature < kGreedyTemperature) return argmax(logits, V);
  const float inv_t = float(1.0 / p_.temperature);
  const float top = logits[argmax(logits, V)];
  cand_.clear();
  cand_.reserve(size_t(V));
  // Scaled relative to the top logit, so every value is <= 0 and no product overflows to +inf.
  for (int64_t i = 0; i < V; i++) cand_.emplace_back((logits[i] - top) * inv_t, int32_t(i));
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < keep) {
    keep = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + long(keep), cand_.end(), by_logit);
    cand_.resize(keep);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // softmax over the candidates
  float mx = cand_[0].first;
  double sum = 0;
  for (auto& c : cand_) {
    c.first = std::exp(c.first - mx);
    sum += c.first;
  }
  for (auto& c : cand_) c.first = float(c.first / sum);
  if (p_.top_p > 0 && p_.top_p < 1) {
    double cum = 0;
    size_t n = 0;
    while (n < cand_.size()) {
      cum += cand_[n].first;
      n++;
      if (cum >= p_.top_p) break;
    }
    cand_.resize(n);
    double s = 0;
    for (auto& c : cand_) s += c.first;
    for (auto& c : cand_) c.first = float(c.first / s);
  } else if (p_.top_p == 0) {
    return cand_[0].second;  // PaddleNLP's greedy_search sets top_p = 0: the most likely token
  }
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double r = u(rng_), cum = 0;
  for (auto& c : cand_) {
    cum += c.first;
    if (r < cum) return c.second;
  }
  return cand_.back().second;
}

}  // namespace oar
