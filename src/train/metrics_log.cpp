#include "train/metrics_log.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"

namespace oar {

std::string py_float(double v, int ndigits) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (ndigits >= 0) {
    // Python rounds the exact binary value half-to-even; printing with %.*f then reparsing does the same for
    // the values logged here.
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", ndigits, v);
    v = std::strtod(buf, nullptr);
  }
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |v| < 1e16, else d.ddde-XX.
  char sci[64];
  auto r = std::to_chars(sci, sci + sizeof sci, v, std::chars_format::scientific);
  std::string s(sci, r.ptr);
  size_t e = s.find('e');
  std::string mant = s.substr(0, e);
  int exp = std::stoi(s.substr(e + 1));
  bool neg = mant[0] == '-';
  if (neg) mant = mant.substr(1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {  // Python's repr: fixed notation in [1e-4, 1e16)
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), size_t(exp) + 1));
      while (int(ip.size()) < exp + 1) ip += '0';
      std::string fp = digits.size() > size_t(exp) + 1 ? digits.substr(size_t(exp) + 1) : "0";
      out = ip + "." + fp;
    } else {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return (neg ? "-" : "") + out;
}

std::string format_log_line(const nlohmann::ordered_json& fields) {
  std::string s;
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    if (!s.empty()) s += ", ";
    s += it.key() + ": ";
    const auto& v = it.value();
    if (v.is_number_float()) s += py_float(v.get<double>());
    else if (v.is_number()) s += v.dump();
    else if (v.is_string()) s += v.get<std::string>();
    else s += v.dump();
  }
  return s;
}

void MetricsLog::open(const std::string& path, int64_t keep_through_step) {
  path_ = path;
  events_.clear();
  std::string kept;
  if (keep_through_step >= 0 && file_exists(path)) {
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) {
      std::optional<nlohmann::json> parsed = try_parse_json(line);
      if (!parsed || !parsed->is_object()) continue;  // a torn last line from a killed run
      nlohmann::json& j = *parsed;
      int64_t step = j.contains("step") && j["step"].is_number() ? j["step"].get<int64_t>() : 0;
      if (step > keep_through_step) continue;
      events_.push_back(j);
      kept += line + "\n";
    }
  }
  write_file_atomic(path, kept);
  f_ = std::fopen(path.c_str(), "ab");
  if (!f_) fail(path, "cannot open for appending");
}

void MetricsLog::write(const nlohmann::ordered_json& event) {
  events_.push_back(nlohmann::json::parse(event.dump()));
  if (!f_) return;
  std::string line = event.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    fail(path_, "write failed");
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  return buf;
}

ProgressBar::ProgressBar(int64_t total, int64_t start, bool enabled)
    : total_(total), start_(start), done_(start), enabled_(enabled && total > 0) {
  t0_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() { clear(); }

void ProgressBar::update(int64_t done, const std::string& postfix) {
  if (!enabled_) return;
  done_ = done;
  postfix_ = postfix;
  auto now = std::chrono::steady_clock::now();
  // Redraw at most 10 times a second, and always at the end.
  if (drawn_ && done_ < total_ && std::chrono::duration<double>(now - last_draw_).count() < 0.1) return;
  last_draw_ = now;
  draw();
}

void ProgressBar::draw() {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const int64_t made = done_ - start_;
  const double rate = made > 0 && elapsed > 0 ? double(made) / elapsed : 0;
  const double eta = rate > 0 ? double(total_ - done_) / rate : -1;
  const int width = 25;
  const int fill = int(double(width) * double(done_) / double(total_));
  std::string bar(size_t(std::clamp(fill, 0, width)), '#');
  bar += std::string(size_t(width) - bar.size(), ' ');
  char rate_s[32];
  if (rate >= 1 || rate == 0) std::snprintf(rate_s, sizeof rate_s, "%.2fit/s", rate);
  else std::snprintf(rate_s, sizeof rate_s, "%.2fs/it", 1.0 / rate);
  std::fprintf(stderr, "\r\033[K%3d%%|%s| %lld/%lld [%s<%s, %s%s%s]", int(100.0 * double(done_) / double(total_)),
               bar.c_str(), (long long)done_, (long long)total_, format_duration(elapsed).c_str(),
               eta < 0 ? "?" : format_duration(eta).c_str(), rate_s, postfix_.empty() ? "" : ", ", postfix_.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::clear() {
  if (!enabled_ || !drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

void ProgressBar::finish() {
  if (!enabled_) return;
  draw();
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  drawn_ = false;
  enabled_ = false;
}

}  // namespace oar
