#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/backend.h"

namespace oar {

bool decays_weight(const std::string& name) {
  return name.find("bias") == std::string::npos && name.find("norm") == std::string::npos;
}

AdamW::AdamW(const AdamWConfig& cfg, const std::vector<Parameter*>& params) : cfg_(cfg) {
  for (Parameter* p : params) {
    if (!p->trainable) continue;
    if (p->value.dtype() != DType::F32 || !p->value.is_contiguous())
      throw Error("AdamW: parameter " + p->name + " is not a contiguous float32 tensor");
    if (!p->grad.defined() || p->grad.shape() != p->value.shape() || p->grad.dtype() != DType::F32)
      throw Error("AdamW: parameter " + p->name + " has no float32 gradient of its shape");
    if (!params_.empty() && p->value.device() != params_[0]->value.device())
      throw Error("AdamW: parameters on two devices (" + p->name + ")");
    params_.push_back(p);
    layout_.add(p->name, p->value.shape());
  }
  if (params_.empty()) return;
  // The moments in two flat buffers laid out by parameter name (ZeRO shards these by ranges).
  Backend& be = backend_for(params_[0]->value.device());
  m_flat_ = layout_.allocate(be);
  v_flat_ = layout_.allocate(be);
  for (const FlatSlot& s : layout_.slots()) {
    m_.push_back(FlatLayout::view(m_flat_, s));
    v_.push_back(FlatLayout::view(v_flat_, s));
  }
}

void AdamW::step(double lr) {
  t_++;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  const double bc1 = 1.0 - std::pow(b1, double(t_));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, double(t_)));
  for (size_t i = 0; i < params_.size(); i++) {
    Parameter* p = params_[i];
    const double plr = p->name.find("lora_B") != std::string::npos ? lr * cfg_.lora_plus_scale : lr;
    const float decay = decays_weight(p->name) ? float(1.0 - plr * cfg_.weight_decay) : 1.0f;
    const float step_size = float(plr / bc1);
    AdamWUpdate u;
    u.beta1 = float(b1);
    u.beta2 = float(b2);
    u.eps = float(cfg_.epsilon);
    u.decay = decay;
    u.step_size = step_size;
    u.inv_bc2_sqrt = float(1.0 / bc2_sqrt);
    backend_for(p->value.device()).train_ops().adamw(p->value, p->grad, m_[i], v_[i], u);
  }
}

int64_t AdamW::state_bytes() const {
  int64_t b = 0;
  for (const auto& t : m_) b += int64_t(t.nbytes()) * 2;
  return b;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); i++) {
    Backend& be = backend_for(m_[i].device());
    out.emplace_back(params_[i]->name + ".exp_avg", be.download(m_[i]));
    out.emplace_back(params_[i]->name + ".exp_avg_sq", be.download(v_[i]));
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& tensors, int64_t steps, const std::string& where) {
  if (steps < 0) fail(where, "negative optimizer step count");
  for (size_t i = 0; i < params_.size(); i++) {
    for (int k = 0; k < 2; k++) {
      const std::string name = params_[i]->name + (k == 0 ? ".exp_avg" : ".exp_avg_sq");
      auto it = tensors.find(name);
      if (it == tensors.end()) fail(where, "missing optimizer state '" + name + "'");
      const Tensor& src = it->second;
      if (src.shape() != params_[i]->value.shape())
        fail(where, "optimizer state '" + name + "' has shape " + shape_str(src.shape()) + ", the parameter " +
                        shape_str(params_[i]->value.shape()));
      Tensor f = src.dtype() == DType::F32 ? src.contiguous() : src.to(DType::F32);
      Tensor& dst = k == 0 ? m_[i] : v_[i];
      Backend& be = backend_for(dst.device());
      be.copy(be.upload(f), dst);
    }
  }
  t_ = steps;
}

namespace {
TrainKernels& ops_of(const Tensor& t) { return backend_for(t.device()).train_ops(); }
}  // namespace

double grad_sq_sum(const std::vector<Parameter*>& params) {
  double total = 0;
  for (Parameter* p : params)
    if (p->trainable) total = ops_of(p->grad).sum_squares(p->grad, total);
  return total;
}

void scale_grads(const std::vector<Parameter*>& params, float s) {
  for (Parameter* p : params)
    if (p->trainable) ops_of(p->grad).scale(p->grad, s);
}

bool grads_finite(const std::vector<Parameter*>& params) {
  for (Parameter* p : params)
    if (p->trainable && !ops_of(p->grad).all_finite(p->grad)) return false;
  return true;
}

double clip_grads(const std::vector<Parameter*>& params, double global_norm, double max_norm) {
  if (max_norm <= 0 || !(global_norm > max_norm)) return 1.0;
  const double f = max_norm / global_norm;
  scale_grads(params, float(f));
  return f;
}

}  // namespace oar
