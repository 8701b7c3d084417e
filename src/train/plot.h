// A small SVG line-chart writer for the loss curve (train and eval loss against the step). Self-contained
// SVG 1.1: opens in any browser or image viewer, no fonts or scripts needed beyond a generic sans-serif.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace oar {

struct PlotSeries {
  std::string label;
  std::string color;                              // CSS color, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite y are skipped
  bool markers = false;                           // a dot on every point (sparse series such as eval loss)
};

struct PlotOptions {
  std::string title = "loss";
  std::string x_label = "step";
  std::string y_label = "loss";
  int width = 800, height = 480;
};

// The chart as SVG text. Axes get "nice" ticks (1, 2, 5 x 10^k); an empty chart still renders its frame.
std::string svg_line_chart(const std::vector<PlotSeries>& series, const PlotOptions& opt);

// Nice tick positions covering [lo, hi] with about `target` intervals (exposed for tests).
std::vector<double> nice_ticks(double lo, double hi, int target);

}  // namespace oar
