// What a training run reports: PaddleNLP-shaped log lines on stdout, one JSON object per event in
// output_dir/metrics.jsonl, and a progress bar with ETA on a terminal.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace oar {

// A float as Python's repr() prints round(v, ndigits) (ndigits < 0: no rounding): "12.06", "2e-06", "3.0".
// PaddleNLP's log lines are Python dicts printed this way, so scripts that parse them keep working.
std::string py_float(double v, int ndigits = -1);

// "k1: v1, k2: v2, ..." in the given order; numbers as Python prints them (integers without a decimal point).
std::string format_log_line(const nlohmann::ordered_json& fields);

// output_dir/metrics.jsonl: one JSON object per line, each with "event" ("train", "eval", "skip", "end", ...)
// and "step". Lines are flushed as written, so a killed run keeps what it logged.
class MetricsLog {
 public:
  MetricsLog() = default;
  // Opens `path`. keep_through_step < 0: a fresh run (the file is replaced). >= 0: a resumed run, whose earlier
  // events with step <= keep_through_step are kept (later ones belong to the interrupted tail and are dropped,
  // as is a torn last line).
  void open(const std::string& path, int64_t keep_through_step);
  void write(const nlohmann::ordered_json& event);
  const std::vector<nlohmann::json>& events() const { return events_; }
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  std::vector<nlohmann::json> events_;
};

// tqdm-like bar on stderr: " 45%|#########           | 45/100 [00:12<00:15, 3.61it/s, loss 3.21]".
// Disabled (all calls no-ops) unless enabled at construction (stderr is a terminal and disable_tqdm is false).
class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t start, bool enabled);
  ~ProgressBar();
  void update(int64_t done, const std::string& postfix = "");
  // Erases the bar before other output; the next update redraws it.
  void clear();
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw();
  int64_t total_, start_, done_;
  bool enabled_, drawn_ = false;
  std::string postfix_;
  std::chrono::steady_clock::time_point t0_, last_draw_;
};

// "1h02m03s", "4m05s", "12s".
std::string format_duration(double seconds);

}  // namespace oar
