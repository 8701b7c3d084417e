// Training throughput on the ~110M-parameter Llama (hidden 768, 12 layers, 12 heads, FFN 2048, vocab 32000):
// tokens/s and MFU in float32 and bfloat16, LoRA fine-tuning (rank 8 on all seven projections, base frozen), and
// PyTorch's tokens/s for the same model and step (bench/pytorch_train_reference.py on Debian's python3-torch,
// 2 threads), all measured in the same run.
//
//   bench_train [--batch 4] [--seq 512] [--steps 3] [--modes f32+lora,bf16+lora_bf16] [--pytorch auto|off|PYTHON]
//               [--layers 12] [--recompute]
//
// --modes: groups separated by ',' run one after the other; the modes of a group ('+') take steps in turn, so that
// their ratio is measured under the same conditions. Modes: f32, bf16, lora (f32), lora_bf16.
//
// A step is zero_grad + forward_backward over batch x seq tokens + an AdamW update (src/train/optimizer.h), as in
// the PyTorch script. The best of --steps timed steps (after one warm-up step) is reported, for both.
// MFU = model FLOPs per second / the GEMM peak this run measures (oneDNN through the training kernels' matmul, on
// the model's own product shapes, float32 for f32 and bfloat16 for bf16). Model FLOPs = 6 x (parameters used in
// matrix products: the seven projections and the LM head, not the embedding lookup) x tokens + the causal
// attention products (forward QK^T and PV over the visible half, x3 for the backward). LoRA's MFU is not given:
// its useful work is not 6 N per token.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "core/cpu_info.h"
#include "core/error.h"
#include "core/fs.h"
#include "kernels/training_kernels.h"
#include "train/optimizer.h"
#include "train/trainable_llama.h"

using namespace oar;

namespace {

struct Args {
  int64_t batch = 4, seq = 512, steps = 3, layers = 12;
  std::string modes = "f32+lora,bf16+lora_bf16";
  std::string pytorch = "auto";
  bool recompute = false;
};

LlamaConfig llama_110m(int64_t layers) {
  LlamaConfig c = llama_preset("llama-110m");
  c.num_hidden_layers = layers;
  return c;
}

// Best GFLOP/s of the training kernels' matmul over the model's product shapes (forward, input-gradient and
// weight-gradient layouts), in dtype dt.
double gemm_peak(int64_t T, DType dt) {
  TrainKernels& K = train_kernels_for(Device::CPU);
  struct Shape3 { int64_t M, N, Kd; bool ta, tb; };
  const Shape3 shapes[] = {{T, 2048, 768, false, true}, {T, 768, 2048, false, true}, {T, 768, 2048, false, false},
                           {2048, 768, T, true, false}, {T, 4096, 768, false, true}};
  double best = 0;
  for (const auto& s : shapes) {
    Tensor a = bench::random_tensor({s.ta ? s.Kd : s.M, s.ta ? s.M : s.Kd}, DType::F32, 0.1f, 1);
    Tensor b = bench::random_tensor({s.tb ? s.N : s.Kd, s.tb ? s.Kd : s.N}, DType::F32, 0.1f, 2);
    if (dt != DType::F32) {
      a = a.to(dt);
      b = b.to(dt);
    }
    Tensor c = Tensor::empty({s.M, s.N}, DType::F32);
    const Tensor av = s.ta ? a.transpose(0, 1) : a, bv = s.tb ? b.transpose(0, 1) : b;
    double t_best = 1e30;
    for (int r = 0; r < 4; r++) {
      const double t0 = bench::now_s();
      K.matmul(av, bv, c);
      const double d = bench::now_s() - t0;
      if (r > 0) t_best = std::min(t_best, d);
    }
    best = std::max(best, 2.0 * double(s.M) * double(s.N) * double(s.Kd) / t_best / 1e9);
  }
  return best;
}

double matmul_params(const LlamaConfig& c) {
  const double C = double(c.hidden_size), F = double(c.intermediate_size), q = double(c.q_dim()), kv = double(c.kv_dim());
  return double(c.num_hidden_layers) * (C * q + 2 * C * kv + q * C + 3 * C * F) + double(c.vocab_size) * C;
}

double model_flops(const LlamaConfig& c, int64_t B, int64_t L) {
  const double q = double(c.q_dim());
  const double n_matmul = matmul_params(c);
  const double tokens = double(B * L);
  // causal: query i sees i + 1 keys; QK^T and PV are 2 multiply-adds per key and head dimension
  const double attn_fwd = double(c.num_hidden_layers) * double(B) * 2.0 * 2.0 * q * double(L) * double(L + 1) / 2.0;
  return 6.0 * n_matmul * tokens + 3.0 * attn_fwd;
}

struct Result {
  double tokens_per_s = 0, step_s = 0, loss = 0;
};

// One model and its optimizer, stepping on a fixed random batch.
struct Runner {
  std::string mode;
  std::unique_ptr<TrainableLlama> model;
  std::unique_ptr<AdamW> adam;
  TrainBatch batch;
  Result res;
  double best = 1e30;

  Runner(const LlamaConfig& cfg, const Args& a, const std::string& m) : mode(m) {
    TrainOptions opt;
    opt.compute = (m == "bf16" || m == "lora_bf16") ? DType::BF16 : DType::F32;
    opt.recompute = a.recompute;
    model = TrainableLlama::random(cfg, opt, 1234);
    if (m.rfind("lora", 0) == 0) model->add_lora(LoraOptions{});
    AdamWConfig ac;
    ac.weight_decay = 0.01;
    adam = std::make_unique<AdamW>(ac, model->parameters());
    // Random tokens, labels = the next token, the last one not counted (as the PyTorch script).
    std::vector<int32_t> ids(size_t(a.batch * a.seq)), labels(ids.size());
    uint64_t x = 88172645463325252ull;
    for (auto& t : ids) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      t = int32_t(x % uint64_t(cfg.vocab_size));
    }
    for (int64_t r = 0; r < a.batch; r++)
      for (int64_t i = 0; i < a.seq; i++)
        labels[size_t(r * a.seq + i)] = i + 1 < a.seq ? ids[size_t(r * a.seq + i + 1)] : -100;
    batch = TrainBatch::causal(a.batch, a.seq, ids, labels);
  }

  // Step s; step 0 warms up (allocations, oneDNN primitives) and is not counted.
  void step(int64_t s, int64_t tokens) {
    const double t0 = bench::now_s();
    model->zero_grad();
    res.loss = model->forward_backward(batch, 1.0f);
    adam->step(1e-4);
    const double d = bench::now_s() - t0;
    std::printf("    %-9s step %lld: %.2f s, loss %.4f\n", mode.c_str(), (long long)s, d, res.loss);
    std::fflush(stdout);
    if (s > 0) best = std::min(best, d);
    res.step_s = best;
    res.tokens_per_s = double(tokens) / best;
  }
};

// Runs the PyTorch reference in a child process and reads its RESULT line.
Result run_pytorch(const std::string& python, const std::string& mode, const Args& a) {
  // The script sits beside this source file (OAR_PYTORCH_SCRIPT overrides).
  const char* env = std::getenv("OAR_PYTORCH_SCRIPT");
  std::string here = __FILE__;
  std::string script = env ? env : here.substr(0, here.find_last_of('/') + 1) + "pytorch_train_reference.py";
  std::ostringstream cmd;
  cmd << python << " " << script << " --mode " << mode << " --batch " << a.batch << " --seq " << a.seq << " --steps "
      << a.steps << " --layers " << a.layers << " --threads 2 2>&1";
  std::printf("    $ %s\n", cmd.str().c_str());
  std::fflush(stdout);
  FILE* p = popen(cmd.str().c_str(), "r");
  if (!p) throw Error("cannot run " + python);
  Result r;
  char line[4096];
  while (std::fgets(line, sizeof line, p)) {
    std::printf("    | %s", line);
    if (std::strncmp(line, "RESULT ", 7) == 0) {
      const char* tp = std::strstr(line, "tokens_per_s=");
      const char* sp = std::strstr(line, "step_s=");
      const char* lp = std::strstr(line, "loss=");
      if (tp) r.tokens_per_s = std::atof(tp + 13);
      if (sp) r.step_s = std::atof(sp + 7);
      if (lp) r.loss = std::atof(lp + 5);
    }
  }
  const int rc = pclose(p);
  if (rc != 0 || r.tokens_per_s <= 0) {
    std::printf("    (PyTorch run failed, exit status %d)\n", rc);
    r.tokens_per_s = 0;
  }
  std::fflush(stdout);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; i++) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--batch") a.batch = std::stoll(next());
    else if (k == "--seq") a.seq = std::stoll(next());
    else if (k == "--steps") a.steps = std::stoll(next());
    else if (k == "--layers") a.layers = std::stoll(next());
    else if (k == "--modes") a.modes = next();
    else if (k == "--pytorch") a.pytorch = next();
    else if (k == "--recompute") a.recompute = true;
    else {
      std::fprintf(stderr, "usage: bench_train [--batch N] [--seq N] [--steps N] [--layers N] [--modes f32+lora,bf16+lora_bf16] "
                           "[--pytorch auto|off|PYTHON] [--recompute]\n");
      return 2;
    }
  }
  const LlamaConfig cfg = llama_110m(a.layers);
  const int64_t T = a.batch * a.seq;
  std::string python = a.pytorch == "auto" ? "/usr/bin/python3" : a.pytorch;
  if (a.pytorch == "auto" && !file_exists(python)) python = "off";
  if (a.pytorch == "off") python = "off";

  std::printf("bench_train: Llama hidden %lld, %lld layers, %lld heads, FFN %lld, vocab %lld; %lld x %lld tokens per step; "
              "%d threads; %s%s\n",
              (long long)cfg.hidden_size, (long long)cfg.num_hidden_layers, (long long)cfg.num_attention_heads,
              (long long)cfg.intermediate_size, (long long)cfg.vocab_size, (long long)a.batch, (long long)a.seq,
              omp_get_max_threads(), cpu_info().model_name.c_str(), a.recompute ? "; recompute" : "");
  const double peak32 = gemm_peak(T, DType::F32), peak16 = gemm_peak(T, DType::BF16);
  std::printf("GEMM peak (oneDNN, model shapes): f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n", peak32, peak16);
  const double flops = model_flops(cfg, a.batch, a.seq);
  std::printf("model FLOPs per step: %.1f GFLOP (6 x %.1fM matmul parameters x %lld tokens + causal attention)\n",
              flops / 1e9, matmul_params(cfg) / 1e6, (long long)T);
  std::fflush(stdout);

  struct Row {
    std::string mode;
    Result ours, torch;
    double mfu = NAN;
  };
  std::vector<Row> rows;
  // Groups separated by ',' run one after the other; the modes of a group ('+') step in turn, so that their
  // ratio (LoRA over full fine-tuning) is measured under the same machine conditions.
  std::stringstream groups(a.modes);
  std::string group;
  while (std::getline(groups, group, ',')) {
    std::vector<std::unique_ptr<Runner>> run;
    std::stringstream gs(group);
    std::string mode;
    while (std::getline(gs, mode, '+')) {
      if (mode != "f32" && mode != "bf16" && mode != "lora" && mode != "lora_bf16") {
        std::fprintf(stderr, "unknown mode %s (f32, bf16, lora, lora_bf16)\n", mode.c_str());
        return 2;
      }
      run.push_back(std::make_unique<Runner>(cfg, a, mode));
    }
    // The peak is measured again beside each group, so MFU compares against the machine as it is at that moment.
    const double g32 = gemm_peak(T, DType::F32), g16 = gemm_peak(T, DType::BF16);
    std::printf("\n== %s (ours); GEMM peak now f32 %.1f, bf16 %.1f GFLOP/s\n", group.c_str(), g32, g16);
    std::fflush(stdout);
    for (int64_t s = 0; s <= a.steps; s++)
      for (auto& r : run) r->step(s, T);
    for (auto& r : run) {
      Row row;
      row.mode = r->mode;
      row.ours = r->res;
      const bool lora = r->mode.rfind("lora", 0) == 0;
      if (!lora) row.mfu = flops / row.ours.step_s / 1e9 / (r->mode == "bf16" ? std::max(g16, peak16) : std::max(g32, peak32));
      rows.push_back(row);
    }
    run.clear();  // free the models before PyTorch runs
    for (Row& row : rows) {
      if (python == "off" || row.mode == "lora_bf16" || row.torch.tokens_per_s > 0 || group.find(row.mode) == std::string::npos) continue;
      std::printf("== %s (PyTorch)\n", row.mode.c_str());
      row.torch = run_pytorch(python, row.mode, a);
    }
  }

  std::printf("\n%-10s %12s %9s %8s %14s %9s\n", "mode", "ours tok/s", "step s", "MFU", "PyTorch tok/s", "ours/PT");
  std::map<std::string, double> tps;
  for (const Row& r : rows) {
    tps[r.mode] = r.ours.tokens_per_s;
    char mfu[32] = "-", pt[32] = "-", ratio[32] = "-";
    if (!std::isnan(r.mfu)) std::snprintf(mfu, sizeof mfu, "%.1f%%", 100 * r.mfu);
    if (r.torch.tokens_per_s > 0) {
      std::snprintf(pt, sizeof pt, "%.1f", r.torch.tokens_per_s);
      std::snprintf(ratio, sizeof ratio, "%.2fx", r.ours.tokens_per_s / r.torch.tokens_per_s);
    }
    std::printf("%-10s %12.1f %9.2f %8s %14s %9s\n", r.mode.c_str(), r.ours.tokens_per_s, r.ours.step_s, mfu, pt, ratio);
  }
  if (tps.count("lora") && tps.count("f32"))
    std::printf("LoRA f32 / full f32 fine-tuning: %.2fx\n", tps["lora"] / tps["f32"]);
  if (tps.count("lora_bf16") && tps.count("bf16"))
    std::printf("LoRA bf16 / full bf16 fine-tuning: %.2fx\n", tps["lora_bf16"] / tps["bf16"]);
  std::printf("peak memory: %.2f GB\n", double(peak_rss_bytes()) / 1e9);
  return 0;
}
