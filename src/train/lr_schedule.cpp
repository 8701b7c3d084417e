#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/format.h"

namespace oar {

LrSchedule::LrSchedule(const LrScheduleConfig& c) : c_(c) {
  if (c_.pretrain_decay && c_.type != "linear" && c_.type != "cosine")
    throw Error("lr schedule: WarmupDecay is defined for linear and cosine only");
  // A warmup as long as the decay horizon (or longer) is fine, as in Paddle: at() warms up through step W and
  // returns min_lr after D without ever dividing by D - W.
}

double LrSchedule::at(int64_t n) const {
  const double lr = c_.learning_rate;
  if (c_.pretrain_decay) {
    // Paddle's LRScheduler constructor steps once (last_epoch 0 -> 1), so n scheduler steps later e = n + 1.
    const double e = double(n + 1), W = c_.warmup, D = double(c_.total_steps);
    if (W > 0 && e <= W) return lr * e / W;
    if (e > D) return c_.min_learning_rate;
    const double r = (e - W) / (D - W);
    const double coeff = c_.type == "cosine" ? 0.5 * (std::cos(M_PI * r) + 1.0) : 1.0 - r;
    return c_.min_learning_rate + coeff * (lr - c_.min_learning_rate);
  }
  // Hugging Face-style lambdas (integer warmup and horizon).
  const int64_t W = int64_t(c_.warmup), T = c_.total_steps;
  if (c_.type == "constant") return lr;
  if (n < W) return lr * double(n) / double(std::max<int64_t>(1, W));
  if (c_.type == "constant_with_warmup") return lr;
  if (c_.type == "linear") return lr * std::max(0.0, double(T - n) / double(std::max<int64_t>(1, T - W)));
  if (c_.type == "cosine") {
    const double progress = double(n - W) / double(std::max<int64_t>(1, T - W));
    return lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * c_.num_cycles * 2.0 * progress)));
  }
  if (c_.type == "polynomial") {
    if (c_.lr_end > lr) throw Error("lr schedule: lr_end (" + number_text(c_.lr_end) + ") must be <= learning_rate");
    if (n > T) return c_.lr_end;
    const double remaining = 1.0 - double(n - W) / double(std::max<int64_t>(1, T - W));
    return (lr - c_.lr_end) * std::pow(remaining, c_.power) + c_.lr_end;
  }
  throw Error("lr schedule: unknown type '" + c_.type + "'");
}

std::string LrSchedule::describe() const {
  char buf[256];
  if (c_.pretrain_decay)
    std::snprintf(buf, sizeof buf, "%sAnnealingWithWarmupDecay(max_lr %g, min_lr %g, warmup %g, decay %lld)",
                  c_.type == "cosine" ? "Cosine" : "Linear", c_.learning_rate, c_.min_learning_rate, c_.warmup,
                  (long long)c_.total_steps);
  else
    std::snprintf(buf, sizeof buf, "%s (lr %g, warmup %lld, total %lld)", c_.type.c_str(), c_.learning_rate,
                  (long long)int64_t(c_.warmup), (long long)c_.total_steps);
  return buf;
}

}  // namespace oar
