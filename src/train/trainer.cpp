#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/cpu_info.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/loss_scaler.h"
#include "train/lr_schedule.h"
#include "train/paddle_checkpoint.h"
#include "train/parameter_shards.h"
#include "train/range_shards.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/plot.h"

namespace oar {

using ojson = nlohmann::ordered_json;

namespace {

// What the run computes in, for the log (so that a bf16 or fp16 run says so).
std::string precision_text(const TrainArgs& a) {
  const char* masters = "fp32 master weights, moments and element-wise operations";
  if (a.bf16) return std::string("bf16 (bf16 matrix operands; ") + masters + ")";
  if (a.fp16 && a.fp16_opt_level != "O0")
    return "fp16 " + a.fp16_opt_level + " (fp16 matrix operands, dynamic loss scaling; " + masters + ")";
  return "float32";
}

}  // namespace

using Clock = std::chrono::steady_clock;

double llama_train_flops(int64_t hidden, int64_t intermediate, int64_t layers, int64_t vocab, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, int64_t tokens, int64_t seq_len, bool recompute,
                         bool frozen_base) {
  const double h = double(hidden), F = double(intermediate), q = double(heads * head_dim), kv = double(kv_heads * head_dim);
  // Forward, per token, multiply-adds counted as 2 flops.
  const double matmul = 2.0 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * F);
  const double attn = 2.0 * 2.0 * double(seq_len) * q;  // scores and weighted sum, full square as PaddleNLP counts
  const double logits = 2.0 * h * double(vocab);
  // Backward: input and weight gradients (2x forward); frozen weights skip the weight gradients.
  const double bwd_matmul = frozen_base ? 1.0 : 2.0;
  double per_token = double(layers) * (matmul * (1 + bwd_matmul) + attn * 3.0) + logits * (1 + bwd_matmul);
  if (recompute) per_token += double(layers) * (matmul + attn);
  return per_token * double(tokens);
}

namespace {

int64_t counted_positions(const TrainBatch& b) {
  // Tokens the model processes for real: padding (segment -1) excluded when segments are given.
  if (b.segment_ids.empty()) return b.B * b.L;
  int64_t n = 0;
  for (int32_t s : b.segment_ids) n += s >= 0;
  return n;
}

double round_to(double v, int digits) {
  const double p = std::pow(10.0, digits);
  return std::round(v * p) / p;
}

double lr_3e(double lr) {  // PaddleNLP logs float("{0:.3e}".format(lr))
  char b[32];
  std::snprintf(b, sizeof b, "%.3e", lr);
  return std::strtod(b, nullptr);
}

}  // namespace

std::vector<double> TrainModel::forward_backward_step(const std::vector<TrainBatch>& batches, float grad_scale,
                                                      const GradsReady& ready) {
  std::vector<double> losses;
  for (size_t i = 0; i < batches.size(); i++) {
    LossStats s;
    losses.push_back(forward_backward(batches[i], grad_scale, &s, i + 1 == batches.size() ? ready : GradsReady{}));
  }
  return losses;
}

struct Trainer::Impl {
  TrainArgs args;
  TrainModel& model;
  const TrainData* train;
  const EvalData* eval;
  const EvalData* test;
  TrainerOptions opt;
  std::vector<Parameter*> params;  // trainable ones
  std::unique_ptr<ParameterShards> shards;  // which parameters this rank's optimizer updates (all but with sharding)
  std::unique_ptr<RangeShards> ranges;      // data parallelism without sharding: this rank updates a range of them
  std::unique_ptr<AdamW> optim;
  std::unique_ptr<BackgroundSums> overlap;  // the gradient sums started during the backward (data parallelism)
  bool stage2_ = false;  // sharding stage2: each rank holds the averaged gradients of its own shard only
  int64_t overlap_started = 0;                    // elements started this step (every trainable one, once)
  std::unique_ptr<LrSchedule> sched;
  DynamicLossScaler scaler;
  TrainerState st;
  MetricsLog metrics;
  std::unique_ptr<ProgressBar> bar;
  int64_t max_steps = 0, steps_per_epoch = 1;
  int64_t data_skip_offset = 0;  // ignore_data_skip: steps resumed without skipping their data
  // Measured over the current logging interval (not saved: time is not reproducible anyway).
  double interval_seconds = 0, interval_flops = 0;
  double interval_sync_seconds = 0, interval_sync_exposed = 0;  // gradient sums: their time, and what was not hidden
  int64_t interval_tokens = 0, interval_samples = 0;

  Impl(const TrainArgs& a, TrainModel& m, const TrainData* tr, const EvalData* ev, const EvalData* te, TrainerOptions o)
      : args(a), model(m), train(tr), eval(ev), test(te), opt(std::move(o)) {
    if (!opt.print) opt.print = [](const std::string& line) { std::printf("%s\n", line.c_str()); std::fflush(stdout); };
  }

  void print(const std::string& line) {
    if (bar) bar->clear();
    opt.print(line);
  }

  double progress_epoch(int64_t step) const { return double(step) / double(steps_per_epoch); }

  void setup() {
    for (Parameter* p : model.parameters())
      if (p->trainable) params.push_back(p);
    AdamWConfig oc;
    oc.beta1 = args.adam_beta1;
    oc.beta2 = args.adam_beta2;
    oc.epsilon = args.adam_epsilon;
    oc.weight_decay = args.weight_decay;
    oc.lora_plus_scale = args.lora_plus_scale;
    // Sharding: each rank's AdamW holds the moments of its own parameters only.
    if (data_parallel())
      for (Parameter* p : params)
        if (p->grad.device() != Device::CPU)
          throw Error("data parallelism: the trainer's communicator reduces host memory, but " + p->name + " is on " +
                      device_name(p->grad.device()));
    shards = std::make_unique<ParameterShards>(params, opt.sharding);
    stage2_ = shards->sharded() && args.sharding_stage() == 2;
    if (stage2_) shards->release_others_grads();
    // Tensor parallelism communicates inside the backward: its replicas sum during it only where MPI lets two
    // threads call at once (MPI_THREAD_MULTIPLE), after it otherwise.
    if (data_parallel() && opt.overlap_grad_reduce && (!tensor() || opt.tensor->concurrent_with_other_groups()))
      overlap = std::make_unique<BackgroundSums>();
    // Summed after the backward, a data-parallel step splits the update by ranges (reduce-scatter, 1/N of the
    // update, all-gather) instead of every rank updating everything: dp2 of the 110M model ran at 0.93 of one
    // process against 0.86 (BENCHMARKS.md). Tensor parallelism counts some gradients on one rank of its group only.
    if (data_parallel() && !shards->sharded() && !overlap && !tensor())
      ranges = RangeShards::make(params, *opt.data_parallel);
    optim = std::make_unique<AdamW>(oc, ranges ? ranges->pieces() : shards->owned());

    LrScheduleConfig sc;
    sc.type = args.lr_scheduler_type;
    sc.learning_rate = args.learning_rate;
    sc.num_cycles = args.num_cycles;
    sc.lr_end = args.lr_end;
    sc.power = args.power;
    if (args.is_pretrain() && (sc.type == "linear" || sc.type == "cosine")) {
      // run_pretrain.py: WarmupDecay with the float warmup, decay_steps defaulting to max_steps.
      sc.pretrain_decay = true;
      sc.min_learning_rate = args.min_learning_rate;
      sc.warmup = args.warmup_steps > 0 ? double(args.warmup_steps) : args.warmup_ratio * double(max_steps);
      sc.total_steps = args.decay_steps > 0 ? args.decay_steps : max_steps;
    } else {
      // Trainer.create_scheduler: warmup from max_steps, decay horizon decay_steps when set.
      sc.warmup = double(args.warmup_steps > 0 ? args.warmup_steps : int64_t(args.warmup_ratio * double(max_steps)));
      sc.total_steps = args.decay_steps > 0 ? args.decay_steps : max_steps;
    }
    if (max_steps <= 0) {  // evaluation only: no schedule to build
      sc.pretrain_decay = false;
      sc.total_steps = 1;
      sc.warmup = 0;
    }
    sched = std::make_unique<LrSchedule>(sc);

    LossScalerConfig lc;
    lc.enabled = args.fp16;
    lc.init_scale = args.scale_loss;
    scaler = DynamicLossScaler(lc);
    st.max_steps = max_steps;
    st.seed = args.seed;
    st.loss_scale = scaler.scale();
  }

  // ---- checkpoints ----

  std::string resume_source() const {
    if (!args.resume_from_checkpoint.empty()) return args.resume_from_checkpoint;
    if (args.do_train && !args.overwrite_output_dir) return last_checkpoint(args.output_dir);
    return "";
  }

  bool paddle_format() const { return args.save_format == "paddle"; }

  // The moments of a checkpoint in either layout, under AdamW's names. `dir`'s layout, not this run's
  // save_format, decides: a run may resume from a checkpoint of another format.
  std::map<std::string, Tensor> read_optimizer_state(const std::string& dir) const {
    if (file_exists(join_path(dir, kPaddleOptimizerIndex)))  // its own parameters' moments, or all to cut to ranges
      return read_paddle_optimizer(dir, ranges ? params : optim->params());
    const std::string opath = join_path(dir, "optimizer.safetensors");
    if (!file_exists(opath))
      fail(dir, std::string("no optimizer state (optimizer.safetensors or ") + kPaddleOptimizerIndex +
                    "); set ignore_load_lr_and_optim to start fresh moments");
    WeightStore ws = WeightStore::open_file(opath);
    std::map<std::string, Tensor> m;
    for (const auto& n : ws.names()) m[n] = ws.get(n);
    return m;
  }

  void load_checkpoint(const std::string& dir) {
    // oar's own state: trainer_state.json, or beside PaddleNLP's in oar_trainer_state.json.
    std::string state_path = join_path(dir, kOarTrainerStateFile);
    if (!file_exists(state_path)) state_path = join_path(dir, "trainer_state.json");
    if (!file_exists(state_path)) fail(dir, "not a checkpoint (no trainer_state.json)");
    const nlohmann::json j = parse_json_file(state_path);
    TrainerState s = TrainerState::from_json(j, state_path);
    model.load(dir);
    if (!args.ignore_load_lr_and_optim) {
      std::map<std::string, Tensor> moments = read_optimizer_state(dir);
      model.take_local_parts(moments);
      if (ranges) moments = ranges->pieces_of(moments, dir);
      optim->load_state(moments, s.scheduler_steps, dir);
    } else {
      s.scheduler_steps = 0;
    }
    if (s.seed != args.seed)
      print("oar: warning: resuming a run started with seed " + std::to_string(s.seed) + " under seed " +
            std::to_string(args.seed) + ": the data order changes from here");
    DynamicLossScaler::State ls{s.loss_scale, s.loss_scale_good_steps, s.loss_scale_bad_steps};
    if (scaler.enabled()) scaler.set_state(ls);
    st = s;
    st.max_steps = max_steps;
    st.seed = args.seed;
  }

  void save_optimizer_state(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& moments) {
    if (!paddle_format()) {
      write_safetensors(join_path(dir, "optimizer.safetensors"), moments,
                        {{"format", "oar-adamw"}, {"step", std::to_string(optim->steps())}});
      return;
    }
    save_paddle_optimizer(dir, moments, optim->config(), optim->steps(),
                          paddle_params_dtype(args) != DType::F32);
    save_paddle_scheduler(dir, sched->paddle_last_epoch(st.scheduler_steps), sched->at(st.scheduler_steps));
  }

  // trainer_state.json (PaddleNLP's fields only in its layout, with oar's own beside it) and training_args.json.
  void save_trainer_state(const std::string& dir, const TrainerState& s) {
    if (paddle_format()) {
      write_file_atomic(join_path(dir, "trainer_state.json"), paddle_trainer_state_json(s, args.num_train_epochs));
      write_file_atomic(join_path(dir, kOarTrainerStateFile), s.to_json().dump(1) + "\n");
    } else {
      write_file_atomic(join_path(dir, "trainer_state.json"), s.to_json().dump(1) + "\n");
    }
    write_file_atomic(join_path(dir, "training_args.json"), train_args_json(args));
  }

  // Data-parallel ranks hold the same weights: rank 0 alone writes files (checkpoints, metrics, the final model),
  // with pipeline or tensor parallelism after the first replica's other stages and parts have sent it theirs.
  bool data_parallel() const { return opt.data_parallel && opt.data_parallel->size() > 1; }
  bool pipeline() const { return opt.pipeline && opt.pipeline->size() > 1; }
  bool tensor() const { return opt.tensor && opt.tensor->size() > 1; }
  bool first_replica() const { return !data_parallel() || opt.data_parallel->rank() == 0; }
  // This rank holds part of the model and takes part in gathering it for rank 0's files.
  bool gathers_parts() const { return (pipeline() || tensor()) && first_replica(); }
  bool writes_files() const {
    return first_replica() && (!pipeline() || opt.pipeline->rank() == 0) && (!tensor() || opt.tensor->rank() == 0);
  }
  // The others wait for rank 0's files: through the data-parallel, pipe and tensor groups, every rank meets it.
  void wait_for_writer() {
    if (data_parallel()) opt.data_parallel->barrier();
    if (pipeline()) opt.pipeline->barrier();
    if (tensor()) opt.tensor->barrier();
  }

  // Every rank starts from rank 0's trainable weights, however each built or loaded them (host memory: checked in
  // setup).
  void broadcast_weights() {
    for (Parameter* p : params) opt.data_parallel->broadcast(p->value.raw(), int64_t(p->value.nbytes()), 0);
  }

  void save_checkpoint(int64_t step) {
    // Sharded moments travel to rank 0 (every rank takes part); the others then wait for its checkpoint.
    std::vector<std::pair<std::string, Tensor>> moments;
    const bool with_moments = !args.ignore_save_lr_and_optim;
    if (with_moments && ranges) moments = ranges->gather_moments(*optim);
    else if (with_moments && (first_replica() || shards->sharded())) moments = shards->gather_moments(*optim);
    if (gathers_parts()) {  // the parts of the model and its moments to rank 0
      model.collect_parts();
      if (with_moments) moments = model.gather_whole(moments);
    }
    if (!writes_files()) {  // the same bookkeeping as rank 0
      if (st.has_best && st.best_step == step)
        st.best_model_checkpoint = join_path(args.output_dir, "checkpoint-" + std::to_string(step));
      wait_for_writer();
      return;
    }
    save_checkpoint_files(step, moments);
    wait_for_writer();
  }

  void save_checkpoint_files(int64_t step, const std::vector<std::pair<std::string, Tensor>>& moments) {
    st.loss_scale = scaler.scale();
    auto ls = scaler.state();
    st.loss_scale_good_steps = ls.good_steps;
    st.loss_scale_bad_steps = ls.bad_steps;
    st.epoch = progress_epoch(step);
    const auto t0 = Clock::now();
    const bool is_best = st.has_best && st.best_step == step;
    std::string path = write_checkpoint_dir(args.output_dir, step, [&](const std::string& tmp) {
      model.save(tmp);
      if (!opt.tokenizer_path.empty()) copy_tokenizer_files(opt.tokenizer_path, tmp);
      if (!args.ignore_save_lr_and_optim) save_optimizer_state(tmp, moments);
      TrainerState s = st;
      if (is_best) s.best_model_checkpoint = join_path(args.output_dir, "checkpoint-" + std::to_string(step));
      save_trainer_state(tmp, s);
    });
    if (is_best) st.best_model_checkpoint = path;
    auto removed = rotate_checkpoints(args.output_dir, args.save_total_limit, st.best_model_checkpoint);
    std::string msg = "Saving model checkpoint to " + path + " (" +
                      py_float(std::chrono::duration<double>(Clock::now() - t0).count(), 2) + " s)";
    for (const auto& r : removed) msg += "; deleted " + std::filesystem::path(r).filename().string() + " (save_total_limit)";
    print(msg);
  }

  // ---- evaluation ----

  EvalResult evaluate(const EvalData& data, int64_t max_batches) {
    EvalResult r;
    const auto t0 = Clock::now();
    int64_t n = data.num_batches();
    if (max_batches > 0) n = std::min(n, max_batches);
    double weighted = 0;
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
      TrainBatch b = data.batch(i);
      LossStats s;
      double l = model.forward_loss(b, &s);
      if (s.tokens == 0) continue;  // nothing labelled in this batch
      // Hugging Face / PaddleNLP: each batch's mean loss repeated batch-size times, then averaged.
      weighted += l * double(b.B);
      r.samples += b.B;
      r.tokens += s.tokens;
      correct += s.correct;
      r.batches++;
    }
    r.loss = r.samples > 0 ? weighted / double(r.samples) : NAN;
    r.ppl = std::exp(r.loss);
    r.accuracy = r.tokens > 0 ? double(correct) / double(r.tokens) : NAN;
    r.runtime = std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
  }

  EvalResult run_eval(const EvalData& data, const std::string& prefix, int64_t step, const std::string& when) {
    const int64_t limit = args.max_evaluate_steps > 0 ? args.max_evaluate_steps : (args.is_pretrain() ? args.eval_iters : -1);
    EvalResult r = evaluate(data, limit);
    ojson f;
    f[prefix + "_loss"] = round_to(r.loss, 8);
    f[prefix + "_ppl"] = round_to(r.ppl, 4);
    f[prefix + "_accuracy"] = round_to(r.accuracy, 6);
    f[prefix + "_runtime"] = round_to(r.runtime, 4);
    f[prefix + "_samples_per_second"] = round_to(r.runtime > 0 ? double(r.samples) / r.runtime : 0, 4);
    f[prefix + "_steps_per_second"] = round_to(r.runtime > 0 ? double(r.batches) / r.runtime : 0, 4);
    f["progress_or_epoch"] = round_to(progress_epoch(step), 4);
    if (!when.empty()) print("***** " + when + " *****");
    print(format_log_line(f));
    ojson ev;
    ev["event"] = prefix;
    ev["step"] = step;
    if (!when.empty()) ev["when"] = when;
    for (auto it = f.begin(); it != f.end(); ++it) ev[it.key()] = it.value();
    ev["samples"] = r.samples;
    ev["tokens"] = r.tokens;
    metrics.write(ev);
    st.log_history.push_back(nlohmann::json::parse(ev.dump()));
    return r;
  }

  // Tracks the best checkpoint candidate (metric_for_best_model) after an evaluation during training.
  void track_best(const EvalResult& r, int64_t step) {
    if (args.metric_for_best_model.empty()) return;
    std::string m = args.metric_for_best_model;
    if (m.rfind("eval_", 0) == 0) m = m.substr(5);
    double v;
    if (m == "loss") v = r.loss;
    else if (m == "accuracy") v = r.accuracy;
    else if (m == "ppl" || m == "perplexity") v = r.ppl;
    else fail(args.source.count("metric_for_best_model") ? args.source.at("metric_for_best_model") : "",
              "metric_for_best_model: '" + args.metric_for_best_model + "' is not one of loss, accuracy, ppl");
    if (!std::isfinite(v)) return;
    const bool greater = args.greater_is_better == 1;
    if (!st.has_best || (greater ? v > st.best_metric : v < st.best_metric)) {
      st.has_best = true;
      st.best_metric = v;
      st.best_step = step;
      st.best_model_checkpoint.clear();  // set when this step is saved
    }
  }

  // ---- the loop ----

  void log_interval(int64_t step, double grad_norm) {
    ojson f;
    const double loss = st.interval_steps > 0 ? st.interval_loss_sum / double(st.interval_steps) : NAN;
    f["loss"] = round_to(loss, 8);
    f["learning_rate"] = lr_3e(sched->at(st.scheduler_steps));  // after the scheduler step, as PaddleNLP logs it
    f["global_step"] = step;
    const double secs = std::max(interval_seconds, 1e-9);
    f["interval_runtime"] = round_to(interval_seconds, 4);
    f["interval_samples_per_second"] = round_to(double(interval_samples) / secs, 4);
    f["interval_steps_per_second"] = round_to(double(st.interval_steps) / secs, 4);
    // Per device: a replica's tokens shared by the ranks (stages, tensor parts) that process them together.
    f["interval_tokens_per_second_per_device"] = round_to(double(interval_tokens) / secs / double(ranks_per_replica()), 4);
    if (data_parallel() || pipeline() || tensor())
      f["interval_tokens_per_second"] = round_to(job_rate(double(interval_tokens), secs), 4);
    f["interval_hardware_tflops_per_device"] = round_to(interval_flops / secs / 1e12, 4);
    f["grad_norm"] = round_to(grad_norm, 6);
    f["loss_scale"] = scaler.scale();
    f["progress_or_epoch"] = round_to(progress_epoch(step), 4);
    print(format_log_line(f));
    ojson ev;
    ev["event"] = "train";
    ev["step"] = step;
    for (auto it = f.begin(); it != f.end(); ++it) ev[it.key()] = it.value();
    ev["interval_tokens"] = interval_tokens;
    if (data_parallel()) {  // this rank's gradient sums: their time, and the share the backward hid
      ev["grad_sync_seconds"] = round_to(interval_sync_seconds, 4);
      ev["grad_sync_hidden_share"] =
          interval_sync_seconds > 0 ? round_to(1.0 - interval_sync_exposed / interval_sync_seconds, 4) : 0.0;
    }
    metrics.write(ev);
    st.log_history.push_back(nlohmann::json::parse(ev.dump()));
    st.interval_loss_sum = 0;
    st.interval_steps = 0;
    interval_seconds = interval_flops = 0;
    interval_sync_seconds = interval_sync_exposed = 0;
    interval_tokens = interval_samples = 0;
  }

  int ranks_per_replica() const {
    return (pipeline() ? opt.pipeline->size() : 1) * (tensor() ? opt.tensor->size() : 1);
  }

  // The whole job's rate: every replica's tokens over the slowest rank's time (every rank calls it).
  double job_rate(double tokens, double seconds) {
    if (data_parallel()) {
      opt.data_parallel->all_reduce(&tokens, 1);
      opt.data_parallel->all_reduce(&seconds, 1, ReduceOp::Max);
    }
    if (pipeline()) opt.pipeline->all_reduce(&seconds, 1, ReduceOp::Max);
    if (tensor()) opt.tensor->all_reduce(&seconds, 1, ReduceOp::Max);
    return tokens / seconds;
  }

  // Data parallelism: each trainable gradient (and the step's loss, for the log) becomes its mean over the ranks.
  // The sums were started during the backward (overlap), or run now. The trainer's communicator works on host
  // memory (checked in setup); a device backend's ranks will reduce through Backend::communicator(). Sharding
  // stage2 reduces each gradient to its owner only (PaddleNLP's reduce to the parameter's rank), so the rank holds
  // the averaged gradients of its own shard (reduced_params()) and the rest are stale.
  void average_over_ranks(double& step_loss) {
    Communicator& c = *opt.data_parallel;
    complete_sums();
    scale_grads(reduced_params(), 1.0f / float(c.size()));
    c.all_reduce(&step_loss, 1);
    step_loss /= double(c.size());
  }

  // The step's gradient sums: waited for when the backward started them, run now otherwise; timed for the log.
  void complete_sums() {
    if (overlap) {
      overlap->wait();
      interval_sync_seconds += overlap->busy_seconds();
      interval_sync_exposed += overlap->exposed_seconds();
      int64_t total = 0;
      for (Parameter* p : params) total += p->grad.numel();
      if (overlap_started != total)
        throw Error("data parallelism: the backward reported " + std::to_string(overlap_started) + " of " +
                    std::to_string(total) + " gradient elements");
      overlap_started = 0;
    } else {
      blocking_sums([this] {
        if (ranges) ranges->reduce_scatter_grads();
        else if (stage2()) shards->reduce_grads_to_owners(params, opt.shard_replicas, nullptr);
        else for (Parameter* p : params) opt.data_parallel->all_reduce(p->grad.data<float>(), p->grad.numel());
      });
    }
  }

  // Runs sums that block this thread, counting their time in the log's sums, all of it exposed.
  template <class F>
  void blocking_sums(F sums) {
    const auto t0 = Clock::now();
    sums();
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    interval_sync_seconds += secs;
    interval_sync_exposed += secs;
  }

  bool stage2() const { return stage2_; }
  // Zeros the gradients before a step. Under stage2 only this rank's own: the others were left zeros, their memory
  // given back, by the reduces (and by setup). Stage2 reduces once a step, after the last micro-batch's backward,
  // not after each as Paddle's stage2 does: with gradient accumulation a rank holds its whole gradients while it
  // accumulates, but here each extra reduce costs far more than it saves (reducing each of 4 micro-batches took
  // 46 s a step against stage1's 12 s, 110M model on 2 cores; BENCHMARKS.md).
  void zero_grads() {
    if (!stage2()) return model.zero_grad();
    for (Parameter* p : shards->owned()) std::memset(p->grad.raw(), 0, p->grad.nbytes());
  }

  // The gradients this rank holds summed over the data-parallel ranks, and scales, measures and updates.
  const std::vector<Parameter*>& reduced_params() const {
    return stage2() ? shards->owned() : ranges ? ranges->pieces() : params;
  }

  // The backward's report of completed gradients: stage2 reduces each to its owner; otherwise each run of them
  // adjacent in memory (a layer's parameters follow each other in the flat gradient buffer) starts one all-reduce.
  // The report's order, the same on every rank, is kept: the ranks must start the same sums in the same order.
  void start_sums(const std::vector<Parameter*>& ps) {
    for (Parameter* p : ps) overlap_started += p->grad.numel();
    if (stage2()) {
      shards->reduce_grads_to_owners(ps, opt.shard_replicas, overlap.get());
      return;
    }
    for (size_t i = 0; i < ps.size();) {
      float* begin = ps[i]->grad.data<float>();
      float* end = begin + ps[i]->grad.numel();
      for (i++; i < ps.size() && ps[i]->grad.data<float>() == end; i++) end += ps[i]->grad.numel();
      overlap->start_all_reduce(*opt.data_parallel, begin, end - begin);
    }
  }

  // Over every gradient of the job: with stage2 each rank sees its shard, and the sharding group adds them up.
  // A pipeline's stages add theirs, and a tensor group's ranks their parts (the whole parameters, the same on every
  // rank of the group, counted by its rank 0).
  bool all_grads_finite() const {
    double bad = grads_finite(reduced_params()) ? 0 : 1;
    if (stage2()) opt.sharding->all_reduce(&bad, 1, ReduceOp::Max);
    if (ranges) ranges->group().all_reduce(&bad, 1, ReduceOp::Max);
    if (pipeline()) opt.pipeline->all_reduce(&bad, 1, ReduceOp::Max);
    if (tensor()) opt.tensor->all_reduce(&bad, 1, ReduceOp::Max);
    return bad == 0;
  }
  double global_grad_norm() const {
    std::vector<Parameter*> counted;
    for (Parameter* p : reduced_params())
      if (!tensor() || opt.tensor->rank() == 0 || model.split_over_tensor_ranks(*p)) counted.push_back(p);
    double sq = grad_sq_sum(counted);
    if (stage2()) opt.sharding->all_reduce(&sq, 1);
    if (ranges) ranges->group().all_reduce(&sq, 1);
    if (pipeline()) opt.pipeline->all_reduce(&sq, 1);
    if (tensor()) opt.tensor->all_reduce(&sq, 1);
    return std::sqrt(sq);
  }

  TrainResult train_loop() {
    TrainResult res;
    const int64_t accum = args.gradient_accumulation_steps;
    const int64_t bpe = train->batches_per_epoch();
    if (bpe <= 0) fail(args.is_pretrain() ? args.input_dir : args.dataset_name_or_path, "no training batches");
    const bool tty = opt.progress_bar && !args.disable_tqdm && ::isatty(2);
    bar = std::make_unique<ProgressBar>(max_steps, st.global_step, tty);
    const auto run_t0 = Clock::now();
    double last_grad_norm = NAN;
    for (int64_t step = st.global_step + 1; step <= max_steps; step++) {
      const auto t0 = Clock::now();
      // The data position is a function of the step (PaddleNLP skips the consumed batches on resume);
      // ignore_data_skip restarts the data from its beginning instead.
      const int64_t data_step = step - 1 - data_skip_offset;
      const int64_t epoch = data_step / steps_per_epoch, in_epoch = data_step % steps_per_epoch;
      zero_grads();
      const double scale = scaler.scale();
      std::vector<TrainBatch> batches;
      for (int64_t a = 0; a < accum; a++) batches.push_back(train->batch(epoch, in_epoch * accum + a));
      GradsReady ready;
      if (overlap) ready = [this](const std::vector<Parameter*>& ps) { start_sums(ps); };
      const std::vector<double> losses = model.forward_backward_step(batches, float(scale / double(accum)), ready);
      double step_loss = 0;
      for (size_t a = 0; a < batches.size(); a++) {
        step_loss += losses[a] / double(accum);
        interval_tokens += counted_positions(batches[a]);
        interval_samples += batches[a].B;
        interval_flops += model.train_flops(batches[a]);
        st.micro_batches++;
      }
      if (data_parallel()) average_over_ranks(step_loss);
      if (pipeline()) opt.pipeline->broadcast(&step_loss, sizeof step_loss, opt.pipeline->size() - 1);  // the last stage's
      bool skipped = false;
      double grad_norm = NAN;
      if (scaler.enabled()) {
        scale_grads(reduced_params(), float(1.0 / scale));
        if (!all_grads_finite()) {
          skipped = true;
          const double before = scaler.scale();
          scaler.update(true);
          print("step " + std::to_string(step) + ": inf/NaN in the gradients, update skipped (optimizer not run, "
                "scale_before: " + py_float(before) + ", scale_after: " + py_float(scaler.scale()) + ")");
          ojson ev{{"event", "skip"}, {"step", step}, {"scale_before", before}, {"scale_after", scaler.scale()}};
          metrics.write(ev);
          st.log_history.push_back(nlohmann::json::parse(ev.dump()));
        }
      }
      if (!skipped) {
        grad_norm = global_grad_norm();
        if (!std::isfinite(grad_norm) || !std::isfinite(step_loss))
          fail("", "step " + std::to_string(step) + ": the loss or the gradients are not finite (loss " +
                       py_float(step_loss) + "); try a lower learning_rate" + (args.fp16 ? "" : " or fp16 loss scaling"));
        clip_grads(reduced_params(), grad_norm, args.max_grad_norm);
        optim->step(sched->at(st.scheduler_steps));
        shards->broadcast_from_owners();
        if (ranges) blocking_sums([this] { ranges->all_gather_values(); });  // the sums' second half
        st.scheduler_steps++;
        scaler.update(false);
      }
      last_grad_norm = grad_norm;
      st.global_step = step;
      st.interval_loss_sum += step_loss;
      st.interval_steps++;
      st.total_loss_sum += step_loss;
      res.step_losses.push_back(step_loss);
      interval_seconds += std::chrono::duration<double>(Clock::now() - t0).count();

      const bool epoch_end = step % steps_per_epoch == 0;
      if ((args.logging_strategy == "steps" && (step % args.logging_steps == 0 || (args.logging_first_step && step == 1))) ||
          (args.logging_strategy == "epoch" && epoch_end))
        log_interval(step, last_grad_norm);
      if (eval && !args.benchmark &&
          ((args.evaluation_strategy == "steps" && step % args.effective_eval_steps() == 0) ||
           (args.evaluation_strategy == "epoch" && epoch_end)))
        track_best(run_eval(*eval, "eval", step, ""), step);
      if (!args.benchmark && ((args.save_strategy == "steps" && step % args.save_steps == 0) ||
                              (args.save_strategy == "epoch" && epoch_end)))
        save_checkpoint(step);
      bar->update(step, "loss " + py_float(step_loss, 4));
      if (opt.after_step) opt.after_step(step);
    }
    bar->finish();
    res.global_step = st.global_step;
    res.train_runtime = std::chrono::duration<double>(Clock::now() - run_t0).count();
    res.train_loss = st.global_step > 0 ? st.total_loss_sum / double(st.global_step) : NAN;
    return res;
  }

  void write_loss_curve() {
    if (!writes_files()) return;
    PlotSeries tr{"train loss", "#1f77b4", {}, false}, ev{"eval loss", "#d62728", {}, true};
    for (const auto& e : metrics.events()) {
      const std::string kind = e.value("event", "");
      if (kind == "train" && e.contains("loss")) tr.points.emplace_back(e["step"].get<double>(), e["loss"].get<double>());
      if (kind == "eval" && e.contains("eval_loss") && e["eval_loss"].is_number())
        ev.points.emplace_back(e["step"].get<double>(), e["eval_loss"].get<double>());
    }
    PlotOptions po;
    po.title = std::string(args.is_pretrain() ? "oar pretrain" : "oar finetune") + ": " + args.output_dir;
    write_file_atomic(join_path(args.output_dir, "loss_curve.svg"), svg_line_chart({tr, ev}, po));
  }

  void save_final_model() {
    if (gathers_parts()) model.collect_parts();
    if (!writes_files()) return;
    const auto t0 = Clock::now();
    model.save(args.output_dir);
    if (!opt.tokenizer_path.empty()) copy_tokenizer_files(opt.tokenizer_path, args.output_dir);
    save_trainer_state(args.output_dir, st);
    print("Saving model to " + args.output_dir + " (" +
          py_float(std::chrono::duration<double>(Clock::now() - t0).count(), 2) + " s)");
  }
};

Trainer::Trainer(const TrainArgs& args, TrainModel& model, const TrainData* train, const EvalData* eval,
                 const EvalData* test, TrainerOptions opt)
    : impl_(std::make_unique<Impl>(args, model, train, eval, test, std::move(opt))) {
  if (args.do_train && !train) throw Error("trainer: do_train without training data");
  if (train) {
    steps_per_epoch_ = std::max<int64_t>(1, train->batches_per_epoch() / args.gradient_accumulation_steps);
    max_steps_ = args.max_steps > 0 ? args.max_steps : int64_t(double(steps_per_epoch_) * args.num_train_epochs);
    if (args.do_train && max_steps_ < 1)
      fail(args.source.count("num_train_epochs") ? args.source.at("num_train_epochs") : "",
           "num_train_epochs " + py_float(args.num_train_epochs) + " x " + std::to_string(steps_per_epoch_) +
               " steps per epoch is less than one step");
  }
  impl_->max_steps = max_steps_;
  impl_->steps_per_epoch = steps_per_epoch_;
  impl_->setup();
}

Trainer::~Trainer() = default;

EvalResult Trainer::evaluate(const EvalData& data, int64_t max_batches) { return impl_->evaluate(data, max_batches); }

TrainResult Trainer::run() {
  Impl& m = *impl_;
  const TrainArgs& a = m.args;
  std::filesystem::create_directories(a.output_dir);
  if (m.writes_files()) remove_stale_temporaries(a.output_dir);

  TrainResult res;
  const std::string resume = a.do_train ? m.resume_source() : "";
  if (!resume.empty()) {
    m.load_checkpoint(resume);
    res.resumed = true;
    res.resumed_from = resume;
    res.resumed_from_step = m.st.global_step;
    if (a.ignore_data_skip) m.data_skip_offset = m.st.global_step;
  }
  if (m.writes_files()) m.metrics.open(join_path(a.output_dir, "metrics.jsonl"), res.resumed ? m.st.global_step : -1);
  if (m.data_parallel()) m.broadcast_weights();
  if (res.resumed) {
    m.print("Resuming from " + resume + ": global_step " + std::to_string(m.st.global_step) + " of " +
            std::to_string(m.max_steps) + ", loss scale " + py_float(m.scaler.scale()));
    // Keep only the history up to the checkpoint (the tail of the killed run is recomputed).
    nlohmann::json kept = nlohmann::json::array();
    for (const auto& e : m.st.log_history)
      if (e.value("step", int64_t(0)) <= m.st.global_step) kept.push_back(e);
    m.st.log_history = kept;
  }
  if (a.do_train) {
    m.print("***** Running training *****");
    m.print("  Num micro-batches per epoch = " + std::to_string(m.train->batches_per_epoch()) +
            ", steps per epoch = " + std::to_string(m.steps_per_epoch) + ", max_steps = " + std::to_string(m.max_steps));
    const int64_t ranks = m.data_parallel() ? m.opt.data_parallel->size() : 1;
    m.print("  Micro-batch size = " + std::to_string(a.per_device_train_batch_size) + ", gradient accumulation = " +
            std::to_string(a.gradient_accumulation_steps) + (ranks > 1 ? ", data-parallel ranks = " + std::to_string(ranks) : "") +
            (m.pipeline() ? ", pipeline stages = " + std::to_string(m.opt.pipeline->size()) : "") +
            (m.tensor() ? ", tensor-parallel ranks = " + std::to_string(m.opt.tensor->size()) : "") +
            ", total batch size = " + std::to_string(a.per_device_train_batch_size * a.gradient_accumulation_steps * ranks));
    int64_t trainable = 0, total = 0;
    for (Parameter* p : m.model.parameters()) {
      total += p->value.numel();
      if (p->trainable) trainable += p->value.numel();
    }
    m.print(std::string("  Trainable parameters") + (m.pipeline() || m.tensor() ? " (this rank's part)" : "") + " = " +
            std::to_string(trainable) + " of " + std::to_string(total) +
            "; optimizer state " + py_float(double(m.optim->state_bytes()) / 1048576.0, 1) + " MiB (float32 moments" +
            (m.shards->sharded() ? ", this rank's share under sharding stage" + std::to_string(a.sharding_stage()) +
                                       " over " + std::to_string(m.opt.sharding->size()) + " ranks)"
             : m.ranges          ? ", this rank's range of the update over " + std::to_string(ranks) + " ranks)"
                                 : ")"));
    m.print("  Learning rate: " + m.sched->describe() + (m.scaler.enabled() ? "; fp16 dynamic loss scaling from " +
                                                             py_float(m.scaler.scale()) : ""));
    m.print("  Precision: " + precision_text(a));
  }

  if (a.do_eval && m.eval && !a.benchmark && m.st.global_step == 0)
    m.run_eval(*m.eval, "eval", 0, a.do_train ? "Evaluate result before train" : "Evaluate result");

  if (a.do_train && m.st.global_step < m.max_steps) {
    TrainResult tr = m.train_loop();
    tr.resumed = res.resumed;
    tr.resumed_from = res.resumed_from;
    tr.resumed_from_step = res.resumed_from_step;
    res = tr;
  } else if (a.do_train) {
    res.global_step = m.st.global_step;
    m.print("Training already complete at step " + std::to_string(m.st.global_step));
  }

  if (a.do_train) {
    ojson f;
    f["train_runtime"] = round_to(res.train_runtime, 4);
    const double run_steps = double(res.step_losses.size());
    const double samples = run_steps * double(a.per_device_train_batch_size * a.gradient_accumulation_steps);
    f["train_samples_per_second"] = round_to(res.train_runtime > 0 ? samples / res.train_runtime : 0, 4);
    f["train_steps_per_second"] = round_to(res.train_runtime > 0 ? run_steps / res.train_runtime : 0, 4);
    f["train_loss"] = round_to(m.st.global_step > 0 ? m.st.total_loss_sum / double(m.st.global_step) : NAN, 8);
    f["progress_or_epoch"] = round_to(m.progress_epoch(m.st.global_step), 4);
    m.print("***** train metrics *****");
    m.print(format_log_line(f));
    m.print("Peak memory of this process: " + py_float(double(peak_rss_bytes()) / 1048576.0, 1) + " MiB");
    ojson ev{{"event", "train_end"}, {"step", m.st.global_step}};
    for (auto it = f.begin(); it != f.end(); ++it) ev[it.key()] = it.value();
    m.metrics.write(ev);
    if (a.benchmark && res.train_runtime > 0) {
      // run_finetune.py / run_pretrain.py's benchmark line (tokens of the steps this run took, every rank's).
      double tokens = 0;
      for (const auto& e : m.metrics.events())
        if (e.value("event", "") == "train") tokens += e.value("interval_tokens", 0.0);
      m.print("Effective_Tokens_per_second: " + py_float(m.job_rate(tokens, res.train_runtime), 2));
    }
    if (a.load_best_model_at_end && m.st.has_best && !m.st.best_model_checkpoint.empty() &&
        dir_exists(m.st.best_model_checkpoint)) {
      m.print("Loading best model from " + m.st.best_model_checkpoint + " (score: " + py_float(m.st.best_metric) + ")");
      m.model.load(m.st.best_model_checkpoint);
    }
    if (!a.benchmark) m.save_final_model();
  }
  if (a.do_eval && m.eval && !a.benchmark && (a.do_train || m.st.global_step == 0)) {
    if (a.do_train) m.run_eval(*m.eval, "eval", m.st.global_step, "Evaluate result after train");
  }
  if (a.do_predict && m.test && !a.benchmark) m.run_eval(*m.test, "test", m.st.global_step, "Test result");
  if (a.do_train || a.do_eval) m.write_loss_curve();
  return res;
}

}  // namespace oar
