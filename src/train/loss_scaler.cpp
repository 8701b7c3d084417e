#include "train/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace oar {

DynamicLossScaler::DynamicLossScaler(const LossScalerConfig& c) : c_(c), scale_(c.init_scale) {
  if (!(c_.init_scale > 0) || !std::isfinite(c_.init_scale)) throw Error("loss scaler: the initial scale must be > 0");
  if (c_.incr_every_n_steps < 1 || c_.decr_every_n_nan_or_inf < 1) throw Error("loss scaler: step counts must be >= 1");
}

bool DynamicLossScaler::update(bool found_inf) {
  if (!c_.enabled) return false;
  const double before = scale_;
  if (found_inf) {
    good_ = 0;
    if (++bad_ == c_.decr_every_n_nan_or_inf) {
      scale_ = std::max(1.0, scale_ * c_.decr_ratio);
      bad_ = 0;
    }
  } else {
    bad_ = 0;
    if (++good_ == c_.incr_every_n_steps) {
      const double next = scale_ * c_.incr_ratio;
      if (std::isfinite(float(next))) scale_ = next;  // Paddle keeps the old scale when float32 would overflow
      good_ = 0;
    }
  }
  return scale_ != before;
}

void DynamicLossScaler::set_state(const State& s) {
  if (!(s.scale > 0) || !std::isfinite(s.scale) || s.good_steps < 0 || s.bad_steps < 0)
    throw Error("loss scaler: invalid saved state");
  scale_ = s.scale;
  good_ = s.good_steps;
  bad_ = s.bad_steps;
}

}  // namespace oar
