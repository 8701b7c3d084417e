// The training loop on a fake bigram model: the loss falls, logging/evaluation/checkpoint cadence, gradient
// accumulation, fp16 overflow skipping, save_total_limit, the loss curve, and exact resume after SIGKILL.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/communicator.h"
#include "core/fs.h"
#include "test_trainer_fakes.h"
#include "train/checkpoint.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace oar {
namespace {

namespace fs = std::filesystem;
using testing::FakeBigram;
using testing::FakeEvalData;
using testing::FakeTrainData;

std::string fresh_dir(const std::string& name) {
  std::string d = (fs::temp_directory_path() / ("oar_trainer_test_" + std::to_string(::getpid()) + "_" + name)).string();
  fs::remove_all(d);
  return d;
}

TrainArgs base_args(const std::string& out) {
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, "{}", "test",
                                      {"--model_name_or_path", "fake", "--output_dir", out, "--dataset_name_or_path", "fake",
                                       "--do_train", "--learning_rate", "0.05", "--logging_steps", "1", "--save_steps", "5",
                                       "--max_steps", "12", "--warmup_steps", "2", "--weight_decay", "0.01"},
                                      nullptr);
  return a;
}

std::vector<nlohmann::json> read_events(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> train_losses(const std::string& out) {
  std::vector<double> l;
  for (const auto& e : read_events(join_path(out, "metrics.jsonl")))
    if (e["event"] == "train") l.push_back(e["loss"].get<double>());
  return l;
}

TrainerOptions quiet(std::vector<std::string>* lines = nullptr) {
  TrainerOptions o;
  o.progress_bar = false;
  o.print = [lines](const std::string& s) { if (lines) lines->push_back(s); };
  return o;
}

TEST(Trainer, LossFallsAndEverythingIsWritten) {
  const std::string out = fresh_dir("basic");
  TrainArgs a = base_args(out);
  a.do_eval = true;
  a.evaluation_strategy = "steps";
  a.eval_steps = 4;
  a.save_total_limit = 2;
  FakeBigram model(8);
  FakeTrainData data(6, 4, 16, 8);
  FakeEvalData eval(2, 4, 16, 8);
  std::vector<std::string> lines;
  Trainer t(a, model, &data, &eval, nullptr, quiet(&lines));
  TrainResult r = t.run();
  ASSERT_EQ(r.step_losses.size(), 12u);
  EXPECT_LT(r.step_losses.back(), r.step_losses.front() - 0.3);

  // PaddleNLP's log line, every step: these keys in this order, numbers as values.
  const std::vector<std::string> keys = {"loss", "learning_rate", "global_step", "interval_runtime",
                                         "interval_samples_per_second", "interval_steps_per_second",
                                         "interval_tokens_per_second_per_device", "interval_hardware_tflops_per_device",
                                         "grad_norm", "loss_scale", "progress_or_epoch"};
  auto is_log_line = [&](const std::string& l) {
    std::istringstream in(l);
    std::string field;
    size_t i = 0;
    while (std::getline(in, field, ',')) {
      if (!field.empty() && field[0] == ' ') field.erase(0, 1);
      const size_t colon = field.find(": ");
      if (i >= keys.size() || colon == std::string::npos || field.substr(0, colon) != keys[i]) return false;
      char* end = nullptr;
      const std::string v = field.substr(colon + 2);
      std::strtod(v.c_str(), &end);
      if (v.empty() || *end != 0) return false;
      i++;
    }
    return i == keys.size();
  };
  int log_lines = 0;
  for (const auto& l : lines) log_lines += is_log_line(l);
  EXPECT_EQ(log_lines, 12);

  auto ev = read_events(join_path(out, "metrics.jsonl"));
  int train = 0, evals = 0;
  for (const auto& e : ev) {
    train += e["event"] == "train";
    evals += e["event"] == "eval";
  }
  EXPECT_EQ(train, 12);
  EXPECT_EQ(evals, 1 + 3 + 1);  // before, steps 4/8/12, after
  // Learning rate logged after step 1 is the scheduler's value for step 2: warmup 2 -> lr * 1/2.
  EXPECT_DOUBLE_EQ(ev[1]["learning_rate"].get<double>(), 0.025);

  // Checkpoints at 5 and 10, both kept (limit 2); the final model and the curve in output_dir.
  auto ck = list_checkpoints(out);
  ASSERT_EQ(ck.size(), 2u);
  EXPECT_EQ(ck[0].first, 5);
  EXPECT_EQ(ck[1].first, 10);
  for (const char* f : {"model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json", "training_args.json"})
    EXPECT_TRUE(file_exists(join_path(ck[1].second, f))) << f;
  EXPECT_TRUE(file_exists(join_path(out, "model.safetensors")));
  const std::string svg = read_file(join_path(out, "loss_curve.svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("eval loss"), std::string::npos);
  auto state = nlohmann::json::parse(read_file(join_path(ck[1].second, "trainer_state.json")));
  EXPECT_EQ(state["global_step"], 10);
  EXPECT_EQ(state["scheduler"]["last_epoch"], 10);
  EXPECT_EQ(state["data"]["micro_batches_consumed"], 10);
  fs::remove_all(out);
}

TEST(Trainer, SaveTotalLimitDeletesTheOldest) {
  const std::string out = fresh_dir("limit");
  TrainArgs a = base_args(out);
  a.save_steps = 2;
  a.save_total_limit = 2;
  FakeBigram model(8);
  FakeTrainData data(6, 2, 8, 8);
  Trainer(a, model, &data, nullptr, nullptr, quiet()).run();
  auto ck = list_checkpoints(out);
  ASSERT_EQ(ck.size(), 2u);
  EXPECT_EQ(ck[0].first, 10);
  EXPECT_EQ(ck[1].first, 12);
  fs::remove_all(out);
}

TEST(Trainer, EpochsAndStepsFollowPaddleNLP) {
  const std::string out = fresh_dir("epochs");
  TrainArgs a = base_args(out);
  a.max_steps = -1;
  a.num_train_epochs = 2.5;
  a.gradient_accumulation_steps = 2;
  FakeBigram model(8);
  FakeTrainData data(7, 2, 8, 8);  // 7 micro-batches: 3 steps per epoch (the 7th is not used)
  Trainer t(a, model, &data, nullptr, nullptr, quiet());
  EXPECT_EQ(t.steps_per_epoch(), 3);
  EXPECT_EQ(t.max_steps(), 7);  // int(3 x 2.5)
  TrainResult r = t.run();
  EXPECT_EQ(r.global_step, 7);
  fs::remove_all(out);
}

TEST(Trainer, GradientAccumulationAveragesMicroBatchMeans) {
  // Two micro-batches accumulated = one step on the average of their gradients. With SGD-like comparison: run
  // one step with accumulation 2, and compare against the optimizer fed the averaged gradient by hand.
  const std::string out = fresh_dir("accum");
  TrainArgs a = base_args(out);
  a.max_steps = 1;
  a.warmup_steps = 0;
  a.gradient_accumulation_steps = 2;
  a.save_strategy = "no";
  a.max_grad_norm = 0;
  FakeBigram model(8), ref(8);
  FakeTrainData data(4, 2, 8, 8);
  Trainer(a, model, &data, nullptr, nullptr, quiet()).run();

  ref.zero_grad();
  ref.forward_backward(data.batch(0, 0), 0.5f, nullptr, {});
  ref.forward_backward(data.batch(0, 1), 0.5f, nullptr, {});
  AdamWConfig c;
  c.weight_decay = 0.01;
  AdamW opt(c, ref.parameters());
  opt.step(0.05);  // linear schedule, no warmup: step 1 uses the full rate
  for (int64_t i = 0; i < 64; i++) EXPECT_EQ(model.W_.value.data<float>()[i], ref.W_.value.data<float>()[i]) << i;
  fs::remove_all(out);
}

// Rank r of a data-parallel run: the micro-batches 2i + r of the shared data, so two ranks together read what one
// process accumulating two micro-batches per step reads.
class RankShard : public TrainData {
 public:
  RankShard(const TrainData& all, int rank) : all_(all), rank_(rank) {}
  int64_t batches_per_epoch() const override { return all_.batches_per_epoch() / 2; }
  TrainBatch batch(int64_t epoch, int64_t index) const override { return all_.batch(epoch, 2 * index + rank_); }
  const TrainData& all_;
  int rank_;
};

TEST(Trainer, DataParallelRanksTakeTheStepsOfOneProcessAccumulatingTheirBatches) {
  // Averaging the ranks' gradients = accumulating their micro-batches, so two ranks on threads must end
  // bit-identical to each other and equal, up to the order of the gradient sums, to one process with
  // gradient_accumulation_steps 2, with gradient clipping, warmup and weight decay in play. (A rank that skipped
  // the average, or summed without dividing, would be off by the learning rate's order, ~1e-2.)
  FakeTrainData data(8, 2, 8, 8);
  const std::string out = fresh_dir("dp_single");
  TrainArgs a = base_args(out);
  a.max_steps = 6;
  a.save_strategy = "no";
  a.max_grad_norm = 0.05;  // small enough to clip
  a.gradient_accumulation_steps = 2;
  FakeBigram single(8);
  TrainResult want = Trainer(a, single, &data, nullptr, nullptr, quiet()).run();

  auto group = make_thread_group(2);
  const std::string rank_dirs[2] = {fresh_dir("dp_rank0"), fresh_dir("dp_rank1")};
  FakeBigram ranks[2] = {FakeBigram(8), FakeBigram(8)};
  TrainResult got[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; r++) {
    threads.emplace_back([&, r] {
      TrainArgs ar = base_args(rank_dirs[r]);
      ar.max_steps = 6;
      ar.save_strategy = "no";
      ar.max_grad_norm = 0.05;
      RankShard shard(data, r);
      TrainerOptions o = quiet();
      o.data_parallel = group[size_t(r)].get();
      got[r] = Trainer(ar, ranks[r], &shard, nullptr, nullptr, o).run();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(got[0].step_losses, got[1].step_losses);
  ASSERT_EQ(got[0].step_losses.size(), want.step_losses.size());
  for (size_t k = 0; k < want.step_losses.size(); k++) EXPECT_NEAR(got[0].step_losses[k], want.step_losses[k], 1e-6) << k;
  for (int64_t i = 0; i < 64; i++) {
    const float w = single.W_.value.data<float>()[i];
    ASSERT_EQ(ranks[0].W_.value.data<float>()[i], ranks[1].W_.value.data<float>()[i]) << "weight " << i;
    EXPECT_NEAR(ranks[0].W_.value.data<float>()[i], w, 1e-5f * std::abs(w) + 1e-7f) << "weight " << i;
  }
  // The gradients themselves are the mean, not the sum (AdamW's update would hide a factor): their logged norms.
  auto grad_norms = [](const std::string& dir) {
    std::vector<double> g;
    for (const auto& e : read_events(join_path(dir, "metrics.jsonl")))
      if (e["event"] == "train") g.push_back(e["grad_norm"].get<double>());
    return g;
  };
  const std::vector<double> g1 = grad_norms(out), g2 = grad_norms(rank_dirs[0]);
  ASSERT_EQ(g1.size(), 6u);
  ASSERT_EQ(g2.size(), g1.size());
  for (size_t k = 0; k < g1.size(); k++) EXPECT_NEAR(g2[k], g1[k], 1e-5 * g1[k]) << "step " << k + 1;
  // And the ranks did train: the loss fell.
  EXPECT_LT(want.step_losses.back(), want.step_losses.front());
  for (const char* d : {"dp_single", "dp_rank0", "dp_rank1"}) fs::remove_all(fresh_dir(d));
}

TEST(Trainer, Fp16OverflowSkipsTheUpdateAndSaysSo) {
  const std::string out = fresh_dir("fp16");
  TrainArgs a = base_args(out);
  a.fp16 = true;
  a.max_steps = 6;
  a.save_strategy = "no";
  FakeBigram model(8);
  model.inf_calls = {3, 4};  // steps 3 and 4 overflow: skip, then skip and halve
  FakeTrainData data(6, 2, 8, 8);
  std::vector<std::string> lines;
  Trainer(a, model, &data, nullptr, nullptr, quiet(&lines)).run();
  int skips = 0;
  for (const auto& l : lines)
    if (l.find("update skipped") != std::string::npos) skips++;
  EXPECT_EQ(skips, 2);
  auto ev = read_events(join_path(out, "metrics.jsonl"));
  std::vector<double> scales;
  for (const auto& e : ev)
    if (e["event"] == "train") scales.push_back(e["loss_scale"].get<double>());
  ASSERT_EQ(scales.size(), 6u);
  EXPECT_EQ(scales[2], 32768.0);
  EXPECT_EQ(scales[3], 16384.0);
  EXPECT_EQ(scales[5], 16384.0);
  // The scheduler did not advance on skipped steps: 4 updates in 6 steps.
  auto st = nlohmann::json::parse(read_file(join_path(out, "trainer_state.json")));
  EXPECT_EQ(st["scheduler"]["last_epoch"], 4);
  EXPECT_EQ(st["global_step"], 6);
  fs::remove_all(out);
}

TEST(Trainer, LoadBestModelAtEnd) {
  const std::string out = fresh_dir("best");
  TrainArgs a = base_args(out);
  a.do_eval = true;
  a.evaluation_strategy = "steps";
  a.eval_steps = 2;
  a.save_steps = 2;
  a.save_total_limit = 1;
  a.load_best_model_at_end = true;
  a.metric_for_best_model = "loss";
  a.greater_is_better = 0;
  a.learning_rate = 0.5;  // large: the loss goes up late in training, so the best is not the last
  a.max_steps = 10;
  FakeBigram model(8);
  FakeTrainData data(6, 2, 8, 8);
  FakeEvalData eval(2, 2, 8, 8);
  std::vector<std::string> lines;
  Trainer(a, model, &data, &eval, nullptr, quiet(&lines)).run();
  auto st = nlohmann::json::parse(read_file(join_path(out, "trainer_state.json")));
  ASSERT_TRUE(st["best_model_checkpoint"].is_string());
  const std::string best = st["best_model_checkpoint"];
  EXPECT_TRUE(dir_exists(best)) << best;  // kept despite save_total_limit 1
  auto ck = list_checkpoints(out);
  EXPECT_EQ(ck.back().first, 10);  // and so is the newest, to resume from
  EXPECT_LE(ck.size(), 2u);
  bool loaded = false;
  for (const auto& l : lines) loaded |= l.rfind("Loading best model from", 0) == 0;
  EXPECT_TRUE(loaded);
  fs::remove_all(out);
}

// The resume test: a child trains and is killed with SIGKILL after step 8 (checkpoints at 5); a second run in
// the same directory resumes from checkpoint-5 and must log exactly the per-step losses of an uninterrupted run.
TEST(Trainer, ResumeAfterSigkillReproducesTheUninterruptedRun) {
  const std::string full = fresh_dir("resume_full"), cut = fresh_dir("resume_cut");
  auto run = [](const std::string& out, bool kill_at_8, bool fp16) {
    TrainArgs a = base_args(out);
    a.fp16 = fp16;
    a.gradient_accumulation_steps = 2;
    a.logging_steps = 1;
    FakeBigram model(8);
    // fp16: the scaled gradients overflow until the scale halves (steps 1 and 2), before the checkpoint, so
    // the resumed run depends on the saved loss scale, its counters and the scheduler position.
    model.overflow_above = 10000.0f;
    FakeTrainData data(5, 2, 8, 8);  // 2 steps per epoch: the resume crosses epochs
    TrainerOptions o = quiet();
    if (kill_at_8) o.after_step = [](int64_t step) { if (step == 8) ::raise(SIGKILL); };
    Trainer(a, model, &data, nullptr, nullptr, o).run();
  };
  for (bool fp16 : {false, true}) {
    fs::remove_all(full);
    fs::remove_all(cut);
    run(full, false, fp16);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      run(cut, true, fp16);
      ::_exit(0);  // not reached
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child was not killed";
    EXPECT_EQ(last_checkpoint(cut), join_path(cut, "checkpoint-5"));
    EXPECT_EQ(train_losses(cut).size(), 8u);  // logged through step 8 before dying
    run(cut, false, fp16);                    // resumes from checkpoint-5
    std::vector<double> a = train_losses(full), b = train_losses(cut);
    ASSERT_EQ(a.size(), 12u);
    ASSERT_EQ(b.size(), 12u);
    for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i], b[i]) << "step " << i + 1 << (fp16 ? " fp16" : "");
    // The final weights agree bit for bit.
    EXPECT_EQ(read_file(join_path(full, "model.safetensors")), read_file(join_path(cut, "model.safetensors")));
  }
  fs::remove_all(full);
  fs::remove_all(cut);
}

TEST(Trainer, LogFormattingIsPythons) {
  EXPECT_EQ(py_float(12.06), "12.06");
  EXPECT_EQ(py_float(2e-06), "2e-06");
  EXPECT_EQ(py_float(3.0), "3.0");
  EXPECT_EQ(py_float(0.0001), "0.0001");
  EXPECT_EQ(py_float(0.00001), "1e-05");
  EXPECT_EQ(py_float(32768.0), "32768.0");
  EXPECT_EQ(py_float(1e16), "1e+16");
  EXPECT_EQ(py_float(2.123456789, 4), "2.1235");
  EXPECT_EQ(py_float(-0.5), "-0.5");
  nlohmann::ordered_json f;
  f["loss"] = 2.5;
  f["global_step"] = 3;
  EXPECT_EQ(format_log_line(f), "loss: 2.5, global_step: 3");
}

}  // namespace
}  // namespace oar
