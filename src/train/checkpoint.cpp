#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/fs.h"

namespace oar {
namespace fs = std::filesystem;

namespace {

// PaddleNLP's _re_checkpoint, ^checkpoint-(\d+)$: the step, or -1 for any other name.
int64_t checkpoint_step(const std::string& name) {
  const std::string prefix = "checkpoint-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0 || name.size() > prefix.size() + 18)
    return -1;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t step = checkpoint_step(e.path().filename().string());
    if (step < 0 || !e.is_directory()) continue;
    if (!file_exists(join_path(e.path().string(), "trainer_state.json"))) continue;
    out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string last_checkpoint(const std::string& dir) {
  auto all = list_checkpoints(dir);
  return all.empty() ? "" : all.back().second;
}

void remove_stale_temporaries(const std::string& output_dir) {
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".tmp-checkpoint-", 0) == 0 || name.rfind(".old-checkpoint-", 0) == 0) fs::remove_all(e.path(), ec);
  }
}

std::string write_checkpoint_dir(const std::string& output_dir, int64_t step,
                                 const std::function<void(const std::string& tmp_dir)>& fill) {
  const std::string name = "checkpoint-" + std::to_string(step);
  const std::string final_dir = join_path(output_dir, name);
  const std::string tmp = join_path(output_dir, ".tmp-" + name);
  const std::string old = join_path(output_dir, ".old-" + name);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) fail(tmp, "cannot create directory: " + ec.message());
  fill(tmp);
  fsync_dir(tmp);
  // Replacing a checkpoint of the same step (a resumed run saving again): move the old one aside first, so
  // some complete checkpoint-N exists at every moment.
  if (fs::exists(final_dir)) {
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) fail(final_dir, "cannot replace: " + ec.message());
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) fail(final_dir, "cannot rename into place: " + ec.message());
  fsync_dir(output_dir);
  fs::remove_all(old, ec);
  return final_dir;
}

std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t limit, const std::string& keep) {
  std::vector<std::string> removed;
  if (limit <= 0) return removed;
  auto all = list_checkpoints(output_dir);
  if (all.empty()) return removed;
  // Like Hugging Face's Trainer: the newest checkpoint (to resume from) and the best one are never deleted, so a
  // limit of 1 keeps two when the best is not the newest.
  std::error_code ec;
  auto is_kept = [&](const std::string& path) {
    return fs::equivalent(path, all.back().second, ec) || (!keep.empty() && fs::exists(keep, ec) && fs::equivalent(path, keep, ec));
  };
  int64_t kept_count = 0;
  for (const auto& c : all) kept_count += is_kept(c.second);
  int64_t excess = int64_t(all.size()) - std::max(limit, kept_count);
  for (const auto& [step, path] : all) {
    if (excess <= 0) break;
    if (is_kept(path)) continue;
    fs::remove_all(path, ec);
    if (ec) fail(path, "cannot delete old checkpoint: " + ec.message());
    removed.push_back(path);
    excess--;
  }
  return removed;
}

int copy_tokenizer_files(const std::string& tokenizer_path, const std::string& dst) {
  static const char* kFiles[] = {"tokenizer.json",         "tokenizer.model",         "tokenizer_config.json",
                                 "special_tokens_map.json", "added_tokens.json",       "generation_config.json",
                                 "chat_template.json",      "chat_template.jinja",     "tokenizer.bin"};
  std::string dir = tokenizer_path;
  std::string single;
  if (!dir_exists(dir)) {
    if (!file_exists(dir)) return 0;
    single = fs::path(dir).filename().string();
    dir = fs::path(dir).parent_path().string();
    if (dir.empty()) dir = ".";
  }
  int n = 0;
  for (const char* f : kFiles) {
    const std::string src = join_path(dir, f);
    if (!file_exists(src)) continue;
    if (!single.empty() && f != single && std::string(f).find(".json") == std::string::npos) continue;
    write_file_atomic(join_path(dst, f), read_file(src));
    n++;
  }
  return n;
}

nlohmann::json TrainerState::to_json() const {
  nlohmann::json j;
  j["global_step"] = global_step;
  j["max_steps"] = max_steps;
  j["epoch"] = epoch;
  j["scheduler"] = {{"last_epoch", scheduler_steps}};
  j["data"] = {{"micro_batches_consumed", micro_batches}};
  j["loss_scaler"] = {{"scale", loss_scale}, {"incr_count", loss_scale_good_steps}, {"decr_count", loss_scale_bad_steps}};
  // Training draws no random numbers after initialisation: the data order is a function of (seed, epoch).
  j["rng_state"] = {{"seed", seed}, {"data_order", "permutation(seed, epoch)"}};
  j["logging_interval"] = {{"loss_sum", interval_loss_sum}, {"steps", interval_steps}};
  j["total_loss_sum"] = total_loss_sum;
  if (has_best) {
    j["best_metric"] = best_metric;
    j["best_step"] = best_step;
    j["best_model_checkpoint"] = best_model_checkpoint;
  } else {
    j["best_metric"] = nullptr;
    j["best_model_checkpoint"] = nullptr;
  }
  j["log_history"] = log_history;
  return j;
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::string& where) {
  TrainerState s;
  try {
    s.global_step = j.at("global_step").get<int64_t>();
    s.max_steps = j.value("max_steps", int64_t(0));
    s.epoch = j.value("epoch", 0.0);
    s.scheduler_steps = j.at("scheduler").at("last_epoch").get<int64_t>();
    s.micro_batches = j.at("data").at("micro_batches_consumed").get<int64_t>();
    s.loss_scale = j.at("loss_scaler").at("scale").get<double>();
    s.loss_scale_good_steps = j.at("loss_scaler").at("incr_count").get<int64_t>();
    s.loss_scale_bad_steps = j.at("loss_scaler").at("decr_count").get<int64_t>();
    s.seed = j.at("rng_state").at("seed").get<int64_t>();
    if (j.contains("logging_interval")) {
      s.interval_loss_sum = j["logging_interval"].at("loss_sum").get<double>();
      s.interval_steps = j["logging_interval"].at("steps").get<int64_t>();
    }
    s.total_loss_sum = j.value("total_loss_sum", 0.0);
    if (j.contains("best_metric") && j["best_metric"].is_number()) {
      s.has_best = true;
      s.best_metric = j["best_metric"].get<double>();
      s.best_step = j.value("best_step", int64_t(-1));
      s.best_model_checkpoint = j.value("best_model_checkpoint", std::string());
    }
    if (j.contains("log_history")) s.log_history = j["log_history"];
  } catch (const nlohmann::json::exception& e) {
    fail(where, std::string("not a trainer state: ") + e.what());
  }
  if (s.global_step < 0 || s.scheduler_steps < 0 || s.scheduler_steps > s.global_step || s.micro_batches < 0)
    fail(where, "inconsistent trainer state (negative or impossible step counts)");
  return s;
}

}  // namespace oar
