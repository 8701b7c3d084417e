#include "infer/smoothing.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/weight.h"

namespace oar {
namespace {

// One smoothed input: the weights that read it (columns * s), what makes it (a norm weight, or a weight's rows
// and bias, / s), and which entry of s each input channel takes (o_proj's channels share v's).
struct Group {
  std::string name;
  std::vector<std::string> readers;
  std::string norm, rows, bias;  // one of norm / rows (+ bias) is set
  std::vector<int64_t> param_of;
  int64_t params = 0;
  const std::vector<float>* act_max = nullptr;
  const std::vector<std::vector<float>>* batch_max = nullptr;
  const Tensor* samples = nullptr;
  int64_t layer = 0;
};

std::vector<int64_t> identity(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

std::vector<Group> groups_of(const LlamaConfig& cfg, const WeightSource& w, const ChannelStats& st,
                             const SmoothOptions& opt) {
  std::vector<Group> out;
  const int64_t D = cfg.head_dim, rep = cfg.num_attention_heads / cfg.num_key_value_heads;
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto add = [&](int j, Group g) {
      g.layer = l;
      g.act_max = &st.absmax[size_t(l)][size_t(j)];
      g.batch_max = &st.batch_absmax[size_t(l)][size_t(j)];
      g.samples = &st.samples[size_t(l)][size_t(j)];
      bool widths_ok = g.act_max->size() == g.param_of.size() && !g.batch_max->empty() &&
                       g.samples->defined() && g.samples->dim(1) == int64_t(g.param_of.size());
      for (const std::vector<float>& b : *g.batch_max) widths_ok = widths_ok && b.size() == g.param_of.size();
      if (!widths_ok) throw Error("smoothing: " + g.name + ": statistics missing or of another width");
      out.push_back(std::move(g));
    };
    const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, QD = cfg.q_dim();
    add(0, {p + "self_attn.q_proj", {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"},
            p + "input_layernorm.weight", "", "", identity(C), C});
    if (opt.all_linears && opt.o_proj) {
      std::vector<int64_t> map(static_cast<size_t>(QD));
      for (int64_t c = 0; c < QD; c++) map[size_t(c)] = (c / D / rep) * D + c % D;
      const std::string vb = p + "self_attn.v_proj.bias";
      add(1, {p + "self_attn.o_proj", {p + "self_attn.o_proj.weight"}, "", p + "self_attn.v_proj.weight",
              w.has(vb) ? vb : "", map, cfg.kv_dim()});
    }
    add(2, {p + "mlp.gate_proj", {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, p + "post_attention_layernorm.weight",
            "", "", identity(C), C});
    if (opt.all_linears)
      add(3, {p + "mlp.down_proj", {p + "mlp.down_proj.weight"}, "", p + "mlp.up_proj.weight", "", identity(F), F});
  }
  return out;
}

// A group's weights in float32 and their float outputs on the sampled rows: what each trial s is scored against.
struct Trial {
  const Group& g;
  ObserverReduce act;
  std::vector<Tensor> weights, reference;
  std::vector<float> w_max, act_max;  // per entry of s: the weights' and the input's largest |value|

  Trial(const Group& grp, const std::map<std::string, Tensor>& f32, ObserverReduce reduce) : g(grp), act(reduce) {
    w_max.assign(size_t(g.params), 0.0f);
    act_max.assign(size_t(g.params), 0.0f);
    for (size_t c = 0; c < g.param_of.size(); c++)
      act_max[size_t(g.param_of[c])] = std::max(act_max[size_t(g.param_of[c])], (*g.act_max)[c]);
    Kernels& ops = cpu_backend().ops();
    for (const std::string& n : g.readers) {
      const Tensor& t = f32.at(n);
      const int64_t out = t.dim(0), in = t.dim(1);
      for (int64_t r = 0; r < out; r++)
        for (int64_t c = 0; c < in; c++) {
          float& m = w_max[size_t(g.param_of[size_t(c)])];
          m = std::max(m, std::fabs(t.data<float>()[r * in + c]));
        }
      Tensor y = Tensor::empty({g.samples->dim(0), out}, DType::F32);
      ops.linear(*g.samples, Weight::dense(t), nullptr, y);
      weights.push_back(t);
      reference.push_back(y);
    }
  }

  // s of every entry: act^alpha / w^(1 - alpha) * factor, per piece; 1 where a channel never moved.
  std::vector<float> scales(const std::vector<int64_t>& piece_of, const std::vector<double>& alpha,
                            const std::vector<double>& factor) const {
    std::vector<float> s(size_t(g.params), 1.0f);
    for (size_t e = 0; e < s.size(); e++) {
      if (!(act_max[e] > 0) || !(w_max[e] > 0)) continue;
      const size_t k = size_t(piece_of[e]);
      const double v = std::pow(double(act_max[e]), alpha[k]) / std::pow(double(w_max[e]), 1 - alpha[k]) * factor[k];
      s[e] = float(std::clamp(v, 1e-5, 1e5));
    }
    return s;
  }

  // The static step PTQ's observer would take of the input divided by s: each batch's maximum, averaged or the
  // largest of them, / 127.
  float step(const std::vector<float>& s) const {
    double total = 0, largest = 0;
    for (const std::vector<float>& b : *g.batch_max) {
      double m = 0;
      for (size_t c = 0; c < b.size(); c++) m = std::max(m, double(b[c]) / s[size_t(g.param_of[c])]);
      total += m;
      largest = std::max(largest, m);
    }
    const double amax = act == ObserverReduce::Average ? total / double(g.batch_max->size()) : largest;
    return float(amax / 127.0);
  }

  // Squared error of the a8w8 outputs on the sampled rows with s, against float.
  double error(const std::vector<float>& s) const {
    const Tensor& X = *g.samples;
    const int64_t R = X.dim(0), in = X.dim(1);
    Tensor xs = Tensor::empty({R, in}, DType::F32);
    for (int64_t r = 0; r < R; r++)
      for (int64_t c = 0; c < in; c++)
        xs.data<float>()[r * in + c] = X.data<float>()[r * in + c] / s[size_t(g.param_of[size_t(c)])];
    const float x_step = step(s);
    double err = 0;
    Kernels& ops = cpu_backend().ops();
    for (size_t i = 0; i < weights.size(); i++) {
      const Tensor& w = weights[i];
      const int64_t out = w.dim(0);
      Tensor ws = Tensor::empty({out, in}, DType::F32);
      for (int64_t r = 0; r < out; r++)
        for (int64_t c = 0; c < in; c++)
          ws.data<float>()[r * in + c] = w.data<float>()[r * in + c] * s[size_t(g.param_of[size_t(c)])];
      Tensor y = Tensor::empty({R, out}, DType::F32);
      ops.linear(xs, Weight::quantize_a8w8(ws, x_step), nullptr, y);
      for (int64_t k = 0; k < R * out; k++) {
        const double d = double(y.data<float>()[k]) - double(reference[i].data<float>()[k]);
        err += d * d;
      }
    }
    return err;
  }
};

// The values of [lo, hi] in steps of `step` (hi included up to rounding).
std::vector<double> grid(double lo, double hi, double step) {
  std::vector<double> v;
  for (int i = 0; lo + i * step <= hi + 1e-9; i++) v.push_back(lo + i * step);
  return v;
}

// s for one group: SmoothQuant's alpha 0.5, or the piecewise search; never worse than no smoothing.
std::vector<float> choose_scales(const Trial& t, const SmoothOptions& opt, SmoothReport& rep) {
  const int64_t P = t.g.params;
  rep.error_before = t.error(std::vector<float>(size_t(P), 1.0f));
  std::vector<float> best(size_t(P), 1.0f);
  double best_err = opt.never_worse ? rep.error_before : HUGE_VAL;
  // Entries ranked by their input's maximum, largest first, cut into k pieces of equal size.
  const std::vector<float>& act = t.act_max;
  std::vector<int64_t> order = identity(P);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return act[size_t(a)] > act[size_t(b)]; });
  auto try_pieces = [&](int64_t k, bool search) {
    std::vector<int64_t> piece_of(static_cast<size_t>(P));
    for (int64_t i = 0; i < P; i++) piece_of[size_t(order[size_t(i)])] = std::min(k - 1, i * k / P);
    std::vector<double> alpha(size_t(k), 0.5), factor(size_t(k), 1.0);
    double cur = t.error(t.scales(piece_of, alpha, factor));
    if (search)
      for (int64_t i = 0; i < k; i++)
        for (double a : grid(opt.alpha_min, opt.alpha_max, 0.1))
          for (double f : grid(opt.scale_min, opt.scale_max, 1.0)) {
            std::vector<double> al = alpha, fa = factor;
            al[size_t(i)] = a;
            fa[size_t(i)] = f;
            const double e = t.error(t.scales(piece_of, al, fa));
            if (e < cur) cur = e, alpha = al, factor = fa;
          }
    if (cur < best_err) best_err = cur, best = t.scales(piece_of, alpha, factor);  // (<: the first of equals)
  };
  if (!opt.piecewise_search) try_pieces(1, false);
  else
    for (int64_t k = opt.search_piece ? 1 : opt.k_piece; k <= opt.k_piece; k++) try_pieces(std::min(k, P), true);
  rep.error_after = best_err;
  rep.s_min = *std::min_element(best.begin(), best.end());
  rep.s_max = *std::max_element(best.begin(), best.end());
  return best;
}

// Divides what makes the input by s and multiplies the readers' columns by it (the product unchanged).
void fold(const Group& g, const std::vector<float>& s, std::map<std::string, Tensor>& f32) {
  for (const std::string& n : g.readers) {
    Tensor& t = f32.at(n);
    const int64_t out = t.dim(0), in = t.dim(1);
    for (int64_t r = 0; r < out; r++)
      for (int64_t c = 0; c < in; c++) t.data<float>()[r * in + c] *= s[size_t(g.param_of[size_t(c)])];
  }
  if (!g.norm.empty()) {
    Tensor& n = f32.at(g.norm);
    for (int64_t c = 0; c < n.numel(); c++) n.data<float>()[c] /= s[size_t(c)];
  }
  if (!g.rows.empty()) {
    Tensor& m = f32.at(g.rows);
    const int64_t in = m.dim(1);
    for (int64_t e = 0; e < m.dim(0); e++)
      for (int64_t c = 0; c < in; c++) m.data<float>()[e * in + c] /= s[size_t(e)];
  }
  if (!g.bias.empty()) {
    Tensor& b = f32.at(g.bias);
    for (int64_t e = 0; e < b.numel(); e++) b.data<float>()[e] /= s[size_t(e)];
  }
}

// A layer's smoothed tensors back in the dtype `weights` stores each in, every value still finite.
void to_stored_dtypes(const std::map<std::string, DType>& stored, std::map<std::string, Tensor>& f32,
                      std::map<std::string, Tensor>& out) {
  for (auto& [name, t] : f32) {
    const DType d = stored.at(name);
    const float limit = d == DType::F16 ? 65504.0f : FLT_MAX;  // float16's largest; bfloat16's is float32's
    for (int64_t i = 0; i < t.numel(); i++)
      if (!(std::fabs(t.data<float>()[i]) <= limit))
        throw Error("smoothing: " + name + " would hold " + std::to_string(t.data<float>()[i]) + ", which " +
                    dtype_name(d) + " cannot (narrow the search_scale range)");
    out[name] = t.to(d);
  }
  f32.clear();
}

}  // namespace

std::map<std::string, Tensor> smooth_weights(const LlamaConfig& cfg, const WeightSource& weights,
                                             const ChannelStats& stats, const SmoothOptions& opt,
                                             const std::function<void(const SmoothReport&)>& report) {
  if (opt.k_piece < 1) throw Error("smoothing: smooth_k_piece must be at least 1");
  if (!(opt.alpha_min <= opt.alpha_max) || opt.alpha_min < 0 || opt.alpha_max > 1)
    throw Error("smoothing: the alpha range must lie in [0, 1] with min <= max");
  if (!(opt.scale_min <= opt.scale_max) || !(opt.scale_min > 0))
    throw Error("smoothing: the scale range must be positive with min <= max");
  std::map<std::string, Tensor> f32, out;  // this layer's tensors in float32; the finished layers'
  std::map<std::string, DType> stored;  // each tensor's dtype in `weights`, to go back to
  auto load = [&](const std::string& n) {
    if (n.empty() || f32.count(n)) return;
    const Tensor t = weights.get(n);
    stored[n] = t.dtype();
    f32[n] = t.to(DType::F32);  // a copy of its own
  };
  const std::vector<Group> groups = groups_of(cfg, weights, stats, opt);
  for (size_t i = 0; i < groups.size(); i++) {
    const Group& g = groups[i];
    for (const std::string& n : g.readers) load(n);
    for (const std::string* n : {&g.norm, &g.rows, &g.bias}) load(*n);
    SmoothReport rep;
    rep.group = g.name;
    std::vector<float> s;
    {
      const Trial t(g, f32, opt.act);  // its copies go before the next group's
      s = choose_scales(t, opt, rep);
    }
    fold(g, s, f32);
    if (report) report(rep);
    if (i + 1 == groups.size() || groups[i + 1].layer != g.layer) to_stored_dtypes(stored, f32, out);
  }
  return out;
}

}  // namespace oar
