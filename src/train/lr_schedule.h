// Learning-rate schedules, exactly as PaddleNLP computes them.
//
// Two families, because PaddleNLP uses two:
//  - Finetune (and pretrain with constant/polynomial): the Trainer's Hugging Face-style LambdaDecay schedules
//    (paddlenlp/trainer/trainer_utils.py). The scheduler starts at n = 0; optimizer step k (1-based) uses
//    lr(k - 1). Warmup = warmup_steps if > 0 else int(warmup_ratio x total); total = decay_steps if > 0 else
//    the run's max_steps. Linear and cosine decay to 0 (min_learning_rate does not apply).
//      linear:   n < W: n/W;  else max(0, (T - n) / max(1, T - W))
//      cosine:   n < W: n/W;  else max(0, 0.5 (1 + cos(pi * num_cycles * 2 * (n - W) / max(1, T - W))))
//      constant: 1;  constant_with_warmup: n < W: n/W else 1
//      polynomial: n < W: n/W; n > T: lr_end/lr; else ((lr - lr_end) (1 - (n - W)/(T - W))^power + lr_end)/lr
//  - Pretrain linear/cosine: run_pretrain.py's LinearAnnealingWithWarmupDecay / CosineAnnealingWithWarmupDecay,
//    built with last_epoch=0 so that Paddle's constructor already steps once: optimizer step k uses g(k), where
//      g(e) = max_lr * e / W                     if W > 0 and e <= W
//           = min_lr                             if e > D
//           = min_lr + c * (max_lr - min_lr)     otherwise, r = (e - W) / (D - W),
//                                                c = 1 - r (linear) or 0.5 (cos(pi r) + 1) (cosine)
//    with W = warmup_steps if > 0 else warmup_ratio x max_steps (not rounded), D = decay_steps or max_steps.
//    W >= D is allowed, as in Paddle: the whole run (steps e <= W) is warmup, and any step past both is min_lr.
//
// A step whose update is skipped (fp16 overflow) does not advance the scheduler, as in PaddleNLP.
#pragma once
#include <cstdint>
#include <string>

namespace oar {

struct LrScheduleConfig {
  std::string type = "linear";  // linear, cosine, constant, constant_with_warmup, polynomial
  bool pretrain_decay = false;   // true: the WarmupDecay classes of run_pretrain.py (linear and cosine only)
  double learning_rate = 5e-5;
  double min_learning_rate = 0;  // WarmupDecay only
  double warmup = 0;             // steps; fractional for WarmupDecay built from warmup_ratio
  int64_t total_steps = 0;       // decay horizon: T (HF) or D (WarmupDecay)
  double num_cycles = 0.5, lr_end = 1e-7, power = 1.0;
};

class LrSchedule {
 public:
  explicit LrSchedule(const LrScheduleConfig& c);
  // The learning rate after the scheduler has been stepped n times; optimizer step k (1-based, counting only
  // steps that updated) uses at(k - 1), and PaddleNLP's log line after step k shows at(k).
  double at(int64_t n) const;
  const LrScheduleConfig& config() const { return c_; }
  // Paddle's LRScheduler.last_epoch after n steps: n for the Trainer's LambdaDecay; n + 1 for run_pretrain.py's
  // WarmupDecay classes, whose constructor (last_epoch=0) has already stepped once.
  int64_t paddle_last_epoch(int64_t n) const { return c_.pretrain_decay ? n + 1 : n; }
  std::string describe() const;  // one line for the log

 private:
  LrScheduleConfig c_;
};

}  // namespace oar
