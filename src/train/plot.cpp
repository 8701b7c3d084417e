#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace oar {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

std::string tick_label(double v, double step) {
  char b[32];
  const int decimals = step >= 1 ? 0 : int(std::ceil(-std::log10(step) - 1e-9));
  std::snprintf(b, sizeof b, "%.*f", std::clamp(decimals, 0, 8), std::fabs(v) < step * 1e-6 ? 0.0 : v);
  return b;
}

double nice_step(double range, int target) {
  const double raw = range / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double step = nice_step(hi - lo, target);
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) t.push_back(v);
  return t;
}

std::string svg_line_chart(const std::vector<PlotSeries>& series, const PlotOptions& opt) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x); x1 = std::max(x1, x);
      y0 = std::min(y0, y); y1 = std::max(y1, y);
    }
  if (!std::isfinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) { y0 -= 0.5; y1 += 0.5; }
  // Snap the axes outward to whole ticks, with a little headroom on y.
  const double ypad = (y1 - y0) * 0.05;
  const double ystep = nice_step(y1 - y0 + 2 * ypad, 6), xstep = nice_step(x1 - x0, 8);
  y0 = std::floor((y0 - ypad) / ystep) * ystep;
  y1 = std::ceil((y1 + ypad) / ystep) * ystep;
  x0 = std::floor(x0 / xstep) * xstep;
  x1 = std::ceil(x1 / xstep) * xstep;

  const double W = opt.width, H = opt.height, ml = 70, mr = 20, mt = 40, mb = 55;
  const double pw = W - ml - mr, ph = H - mt - mb;
  auto X = [&](double x) { return ml + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return mt + (1 - (y - y0) / (y1 - y0)) * ph; };

  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << opt.width << "\" height=\"" << opt.height
    << "\" viewBox=\"0 0 " << opt.width << " " << opt.height << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << num(W / 2) << "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" << esc(opt.title) << "</text>\n";
  // Grid and tick labels.
  o << "<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n";
  auto line = [&](double xa, double ya, double xb, double yb) {
    o << "<line x1=\"" << num(xa) << "\" y1=\"" << num(ya) << "\" x2=\"" << num(xb) << "\" y2=\"" << num(yb) << "\"/>\n";
  };
  for (double v : nice_ticks(y0, y1, 6)) line(ml, Y(v), ml + pw, Y(v));
  for (double v : nice_ticks(x0, x1, 8)) line(X(v), mt, X(v), mt + ph);
  o << "</g>\n<g fill=\"#333\">\n";
  for (double v : nice_ticks(y0, y1, 6))
    o << "<text x=\"" << num(ml - 6) << "\" y=\"" << num(Y(v) + 4) << "\" text-anchor=\"end\">" << tick_label(v, ystep) << "</text>\n";
  for (double v : nice_ticks(x0, x1, 8))
    o << "<text x=\"" << num(X(v)) << "\" y=\"" << num(mt + ph + 18) << "\" text-anchor=\"middle\">" << tick_label(v, xstep) << "</text>\n";
  o << "<text x=\"" << num(ml + pw / 2) << "\" y=\"" << num(H - 12) << "\" text-anchor=\"middle\">" << esc(opt.x_label) << "</text>\n"
    << "<text transform=\"translate(18 " << num(mt + ph / 2) << ") rotate(-90)\" text-anchor=\"middle\">" << esc(opt.y_label) << "</text>\n"
    << "</g>\n"
    << "<rect x=\"" << num(ml) << "\" y=\"" << num(mt) << "\" width=\"" << num(pw) << "\" height=\"" << num(ph)
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  // Series.
  for (const auto& s : series) {
    std::ostringstream pts;
    int n = 0;
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      pts << (n++ ? " " : "") << num(X(x)) << "," << num(Y(y));
    }
    if (n == 0) continue;
    o << "<polyline fill=\"none\" stroke=\"" << esc(s.color) << "\" stroke-width=\"1.8\" points=\"" << pts.str() << "\"/>\n";
    if (s.markers) {
      o << "<g fill=\"" << esc(s.color) << "\">\n";
      for (auto [x, y] : s.points)
        if (std::isfinite(x) && std::isfinite(y)) o << "<circle cx=\"" << num(X(x)) << "\" cy=\"" << num(Y(y)) << "\" r=\"3.5\"/>\n";
      o << "</g>\n";
    }
  }
  // Legend, top right inside the plot.
  double ly = mt + 16;
  for (const auto& s : series) {
    const double lx = ml + pw - 150;
    o << "<line x1=\"" << num(lx) << "\" y1=\"" << num(ly - 4) << "\" x2=\"" << num(lx + 24) << "\" y2=\"" << num(ly - 4)
      << "\" stroke=\"" << esc(s.color) << "\" stroke-width=\"2.5\"/>\n"
      << "<text x=\"" << num(lx + 30) << "\" y=\"" << num(ly) << "\">" << esc(s.label) << "</text>\n";
    ly += 18;
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace oar
