// Dynamic loss scaling for float16 training, with the rules and defaults of paddle.amp.GradScaler as PaddleNLP's
// Trainer builds it (GradScaler(init_loss_scaling=scale_loss), everything else default):
//   init 2^15 (scale_loss 32768), incr_ratio 2, decr_ratio 0.5, incr_every_n_steps 1000,
//   decr_every_n_nan_or_inf 2.
// Each optimizer step reports whether the unscaled gradients held an inf/NaN:
//   found:   the update is skipped; good count := 0; bad count += 1; when it reaches decr_every_n_nan_or_inf the
//            scale is multiplied by decr_ratio (never below 1) and the bad count restarts.
//   clean:   bad count := 0; good count += 1; when it reaches incr_every_n_steps the scale is multiplied by
//            incr_ratio (kept when that would overflow) and the good count restarts.
// So with Paddle's defaults the first overflow skips the step and the second consecutive one halves the scale.
// bfloat16 and float32 runs do not scale (PaddleNLP's do_grad_scaling is fp16 only).
#pragma once
#include <cstdint>
#include <string>

namespace oar {

struct LossScalerConfig {
  bool enabled = false;
  double init_scale = 32768.0;
  double incr_ratio = 2.0, decr_ratio = 0.5;
  int64_t incr_every_n_steps = 1000, decr_every_n_nan_or_inf = 2;
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(const LossScalerConfig& c = {});
  bool enabled() const { return c_.enabled; }
  // The factor the loss (hence every gradient) is multiplied by; 1 when disabled.
  double scale() const { return c_.enabled ? scale_ : 1.0; }
  // Records one step's outcome and adapts the scale. Returns true when the scale changed.
  bool update(bool found_inf);

  // For checkpoints.
  struct State {
    double scale = 32768.0;
    int64_t good_steps = 0, bad_steps = 0;
  };
  State state() const { return {scale_, good_, bad_}; }
  void set_state(const State& s);

 private:
  LossScalerConfig c_;
  double scale_;
  int64_t good_ = 0, bad_ = 0;
};

}  // namespace oar
