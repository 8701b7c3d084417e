// The training loop of `oar pretrain` / `oar finetune`: PaddleNLP Trainer's semantics on one process.
//
//  - steps: max_steps, else int(num_train_epochs x steps per epoch), steps per epoch = max(1, micro-batches per
//    epoch / gradient_accumulation_steps) (micro-batches past the last whole step of an epoch are not used);
//  - one step = gradient_accumulation_steps micro-batches, each backpropagating its mean loss / accumulation
//    steps (x the fp16 loss scale); then unscale, inf/NaN check (fp16: skip the update, adapt the scale, say so),
//    global-norm clipping, AdamW with the scheduled learning rate;
//  - every logging_steps a PaddleNLP-shaped line and a metrics.jsonl event; evaluation before and after training
//    and every eval_steps (eval_loss, eval_ppl, eval_accuracy); checkpoints every save_steps;
//  - resume from the newest checkpoint-N in output_dir (or resume_from_checkpoint): weights, moments, step,
//    scheduler, loss scale and data position, so the resumed run computes exactly what the uninterrupted one
//    would have.
// The model and the data come through small interfaces, so the loop is tested with fakes and a sharded layout can
// later plug in its own.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "train/train_args.h"
#include "train/trainable_llama.h"

namespace oar {

// What the trainer drives (TrainableLlama through LlamaTrainModel, or a fake in tests).
class TrainModel {
 public:
  virtual ~TrainModel() = default;
  // In a fixed order; frozen parameters have trainable == false.
  virtual std::vector<Parameter*> parameters() = 0;
  // Mean loss over the counted tokens of `b`; ADDS d(mean loss x grad_scale)/dparam to each trainable grad.
  // `ready`, when set, must hear of every trainable parameter once, as its gradient completes.
  virtual double forward_backward(const TrainBatch& b, float grad_scale, LossStats* stats, const GradsReady& ready) = 0;
  // One optimizer step's micro-batches, each as forward_backward (gradients added), `ready` hearing of the last
  // one's. Returns each micro-batch's mean loss. The default runs forward_backward on each in turn; a pipeline
  // stage runs them through the stages together and knows the losses on the last stage only (zeros elsewhere).
  virtual std::vector<double> forward_backward_step(const std::vector<TrainBatch>& batches, float grad_scale,
                                                    const GradsReady& ready);
  virtual double forward_loss(const TrainBatch& b, LossStats* stats) = 0;
  virtual void zero_grad() = 0;
  // Floating-point operations of one forward + backward over `b` as the hardware executes them (PaddleNLP's
  // interval_hardware_tflops_per_device: matmuls and attention, x3 for backward, + a forward when recomputing).
  virtual double train_flops(const TrainBatch& b) const = 0;
  // A model split over ranks (pipeline stages, tensor-parallel parts): every rank of the first replica calls
  // collect_parts() before save(), which then writes the whole model on the writing rank (rank 0).
  virtual void collect_parts() {}
  // The whole model's tensors from this rank's parts (parameters, or AdamW moments "<param>.exp_avg[_sq]"), on
  // rank 0 (empty elsewhere); collective over the first replica's ranks. A whole model returns `mine`.
  virtual std::vector<std::pair<std::string, Tensor>> gather_whole(const std::vector<std::pair<std::string, Tensor>>& mine) {
    return mine;
  }
  // The reverse for a checkpoint's whole tensors (parameters or moments, by name): this rank's parts, in place.
  virtual void take_local_parts(std::map<std::string, Tensor>& tensors) const { (void)tensors; }
  // Whether a tensor-parallel rank holds only its part of `p` (else every rank of the group holds it whole).
  virtual bool split_over_tensor_ranks(const Parameter& p) const { (void)p; return false; }
  // Writes the weights a checkpoint needs into `dir` (Hugging Face layout, or a PEFT adapter for LoRA runs).
  virtual void save(const std::string& dir) const = 0;
  // Restores the trainable weights from a directory written by save(). `where` names it in errors.
  virtual void load(const std::string& dir) = 0;
};

// Training micro-batches by (epoch, index): deterministic, so a resumed run reads what the interrupted one would.
class TrainData {
 public:
  virtual ~TrainData() = default;
  virtual int64_t batches_per_epoch() const = 0;
  virtual TrainBatch batch(int64_t epoch, int64_t index) const = 0;
};

// Evaluation micro-batches (dev set, pretraining validation split).
class EvalData {
 public:
  virtual ~EvalData() = default;
  virtual int64_t num_batches() const = 0;
  virtual TrainBatch batch(int64_t index) const = 0;
};

// Evaluation and test results.
struct EvalResult {
  double loss = 0, ppl = 0, accuracy = 0;
  int64_t batches = 0, samples = 0, tokens = 0;
  double runtime = 0;
};

struct TrainResult {
  int64_t global_step = 0;
  double train_loss = 0;      // mean step loss over the steps this process ran (PaddleNLP's train_loss)
  double train_runtime = 0;
  std::vector<double> step_losses;  // per step run in this process
  bool resumed = false;
  int64_t resumed_from_step = 0;
  std::string resumed_from;
};

struct TrainerOptions {
  std::string tokenizer_path;  // tokenizer files copied into checkpoints and the final model ("" = none)
  bool progress_bar = true;    // on a terminal, unless disable_tqdm
  // Called after every optimizer step (tests kill the process here).
  std::function<void(int64_t global_step)> after_step;
  // Where log lines go (default stdout).
  std::function<void(const std::string& line)> print;
  // The data-parallel group this trainer is one rank of (null: a single process). Each rank trains on its own
  // micro-batches; the gradients (and the logged loss) are averaged over the ranks before the loss-scale check,
  // the norm, the clip and the optimizer step, so every rank takes the same step.
  Communicator* data_parallel = nullptr;
  // Sharding (the `sharding` argument's stage): the group, within data_parallel, that splits the optimizer state
  // (stage1) and the averaged gradients (stage2) between its ranks; null without sharding. With data parallelism
  // beside it, `shard_replicas` is the group of the ranks holding the same shard (null when there is one replica).
  Communicator* sharding = nullptr;
  Communicator* shard_replicas = nullptr;
  // Pipeline parallelism: the pipe group of this rank's stage (null without). data_parallel is then the group of
  // the ranks holding the same stage. The stages' gradient norms and finite checks are combined over it, the loss
  // comes from the last stage, and checkpoints gather the stages' weights and moments on its first stage.
  Communicator* pipeline = nullptr;
  // Tensor parallelism: the ranks holding the other parts of this rank's parameters (null without). The norm and
  // the finite check add their parts. The model uses this group inside the backward: the data-parallel sums
  // overlap it only where the groups may be called from two threads at once (concurrent_with_other_groups).
  Communicator* tensor = nullptr;
  // Data parallelism and sharding: sum each group of gradients on a background thread as soon as the backward of
  // the step's last micro-batch completes it, hiding the communication behind the rest of the backward. Off: one
  // blocking sum after the backward. `oar pretrain`/`finetune` choose (cli/train.cpp: choose_grad_overlap); the
  // trainer does not overlap under tensor parallelism unless the tensor group allows concurrent calls.
  bool overlap_grad_reduce = true;
};

class Trainer {
 public:
  // `train` may be null when do_train is false; `eval` / `test` may be null.
  Trainer(const TrainArgs& args, TrainModel& model, const TrainData* train, const EvalData* eval,
          const EvalData* test, TrainerOptions opt = {});
  ~Trainer();
  // Runs what the arguments ask: evaluation before training, training, evaluation after, test, final model,
  // loss curve. Throws oar::Error.
  TrainResult run();
  EvalResult evaluate(const EvalData& data, int64_t max_batches);

  // The number of optimizer steps the run will take (for messages and tests).
  int64_t max_steps() const { return max_steps_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t max_steps_ = 0, steps_per_epoch_ = 1;
};

// Hardware FLOPs of a Llama forward + backward on `tokens` tokens in rows of `seq_len` (PaddleNLP's
// calculate_llm_flops with GQA: 2 x (layers x (3 x per-layer + recompute forward) + 3 x logits)). With LoRA only
// the input gradients of the frozen matmuls are computed: the backward of those counts once, not twice.
double llama_train_flops(int64_t hidden, int64_t intermediate, int64_t layers, int64_t vocab, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, int64_t tokens, int64_t seq_len, bool recompute,
                         bool frozen_base);

}  // namespace oar
