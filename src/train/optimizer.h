// AdamW with decoupled weight decay over float32 master parameters, float32 moments, state keyed by parameter
// name (so a sharded layout can own a subset and a checkpoint can be re-laid out). Only trainable parameters get
// state; frozen ones (LoRA's base weights) cost nothing.
//
// Update (Paddle's AdamW and torch.optim.AdamW compute the same thing):
//   p <- p * (1 - lr * wd)                                   (decoupled decay, before the moment update)
//   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Weight decay skips parameters whose name contains "bias" or "norm" (PaddleNLP's Trainer.create_optimizer:
// apply_decay_param_fun excludes biases and every RMSNorm weight; embeddings, lm_head and LoRA A/B are decayed).
//
// Gradient clipping is Paddle's ClipGradByGlobalNorm: g <- g * c / max(||g||, c) over all trainable gradients.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/flat_params.h"
#include "train/trainable_llama.h"

namespace oar {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, weight_decay = 0.0;
  double lora_plus_scale = 1.0;  // LoRA+: learning-rate multiplier of parameters named "...lora_B..."
};

// True when PaddleNLP would apply weight decay to this parameter.
bool decays_weight(const std::string& name);

class AdamW {
 public:
  // `params`: the parameters to optimise (frozen ones are skipped); the pointers must outlive the optimizer.
  AdamW(const AdamWConfig& cfg, const std::vector<Parameter*>& params);

  // One update with learning rate `lr` from the current gradients (already unscaled and clipped).
  void step(double lr);
  int64_t steps() const { return t_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<Parameter*>& params() const { return params_; }
  int64_t state_bytes() const;

  // Moments as named host tensors "<param>.exp_avg" / "<param>.exp_avg_sq" (on the CPU views of the live state),
  // and back.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Restores moments and the step count; every trainable parameter's moments must be present with its shape.
  // `where` names the file in errors.
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t steps, const std::string& where);

 private:
  AdamWConfig cfg_;
  std::vector<Parameter*> params_;
  FlatLayout layout_;        // one slot per parameter, by name
  Tensor m_flat_, v_flat_;   // the moments' flat buffers, on the parameters' backend
  std::vector<Tensor> m_, v_;  // per parameter: views of them
  int64_t t_ = 0;
};

// Sum of squared gradient elements over `params` (the local part of the global norm; a sharded run adds the
// ranks' sums before the square root). Accumulated in double.
double grad_sq_sum(const std::vector<Parameter*>& params);
// Multiplies every gradient by `s`.
void scale_grads(const std::vector<Parameter*>& params, float s);
// True when every gradient element is finite.
bool grads_finite(const std::vector<Parameter*>& params);
// ClipGradByGlobalNorm given the global norm: scales by c / max(norm, c) when norm > c. Returns the factor.
double clip_grads(const std::vector<Parameter*>& params, double global_norm, double max_norm);

}  // namespace oar
