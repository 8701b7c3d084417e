// Prefill and decode speed of a TinyLlama-1.1B-shaped model (random weights) in float32, bfloat16,
// weight_only_int8, weight_only_int4 in groups of 128 (quantized projections, float32 activations) and a8w8
// (int8 projections and activations), each as a fraction of a ceiling measured in the same run: decode against
// the memory read bandwidth (every weight is read once per token), prefill against the GEMM peak of the compute
// dtype (a8w8: the u8 x s8 integer GEMM's).
//
//   bench_llama [--prompt 512] [--decode 64] [--dtypes bf16,f32,int8,int4g128,a8w8]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "core/cpu_info.h"
#include "infer/generator.h"
#include "infer/roofline.h"
#include "kernels/kernels.h"

using namespace oar;
using namespace oar::bench;

int main(int argc, char** argv) {
  int64_t prompt = 512, decode = 64;
  std::string dtypes = "bf16,f32";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--prompt")) prompt = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--decode")) decode = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dtypes")) dtypes = argv[i + 1];
  }
  const CpuInfo& ci = cpu_info();
  std::printf("machine: %s, %d threads, kernels %s\n", ci.model_name.c_str(), omp_get_max_threads(),
              kernels_for(Device::CPU).name());
  const LlamaConfig cfg = tinyllama_1_1b();
  std::printf("model: TinyLlama-1.1B shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000)\n");
  std::printf("workload: prompt %lld tokens, then %lld decoded tokens, batch 1, greedy\n\n", (long long)prompt,
              (long long)decode);
  std::printf("ceiling: memory read bandwidth %.1f GB/s (first probe; decode runs are each held against their own)\n",
              measure_read_bandwidth() / 1e9);
  struct Kind { std::string name; DType dt; std::optional<QuantSpec> quant; DType gemm_dt; };
  const Kind kinds[] = {{"bf16", DType::BF16, {}, DType::BF16}, {"f32", DType::F32, {}, DType::F32},
                        {"int8", DType::F32, QuantSpec{WeightFormat::Int8, -1}, DType::F32},
                        {"int4g128", DType::F32, QuantSpec{WeightFormat::Int4, 128}, DType::F32},
                        {"a8w8", DType::F32, QuantSpec{WeightFormat::A8W8, -1}, DType::I8}};
  for (const Kind& kind : kinds) {
    const std::string& dts = kind.name;
    if (dtypes.find(dts) == std::string::npos) continue;
    const DType dt = kind.dt;
    // The GEMM ceiling: the model's largest product (gate/up projection) at the prefill length.
    const double peak = measure_gemm_flops(kind.gemm_dt, prompt, cfg.intermediate_size, cfg.hidden_size);
    std::printf("ceiling: %s GEMM peak %.1f GFLOP/s (%lld x %lld x %lld)%s\n", dtype_name(kind.gemm_dt), peak / 1e9, (long long)prompt,
                (long long)cfg.intermediate_size, (long long)cfg.hidden_size, peak > 0 ? "" : ": this CPU has no such GEMM");
    auto model = random_model(cfg, dt, kind.quant);
    Generator gen(*model);
    GenerationRequest r;
    r.prompt.resize(size_t(prompt));
    for (int64_t i = 0; i < prompt; i++) r.prompt[size_t(i)] = int32_t((i * 7919) % cfg.vocab_size);
    r.max_new_tokens = decode;
    r.sampling.greedy = true;
    r.ignore_eos = true;
    gen.run({r}, {});  // warm-up: page in the weights, build the GEMM primitives
    // Prefill: the best of the same 5 runs. Decode: 5 runs, each held against the higher of the bandwidth probes taken
    // right before and right after it (each probe the median of 7 passes over 1 GiB); the median of the 5 ratios
    // is reported. The guest's bandwidth drifts by tens of percent within seconds, so only adjacent measurements
    // are compared.
    GenerationStats best;
    best.prefill_seconds = 1e30;
    best.decode_seconds = 1e30;
    const double wbytes = double(model->decode_weight_bytes());
    std::vector<double> ratios, rates, probes{measure_read_bandwidth()};
    for (int rep = 0; rep < 5; rep++) {
      GenerationStats st;
      gen.run({r}, {}, &st);
      if (st.prefill_seconds < best.prefill_seconds) { best.prefill_seconds = st.prefill_seconds; best.prompt_tokens = st.prompt_tokens; }
      if (st.decode_seconds < best.decode_seconds) { best.decode_seconds = st.decode_seconds; best.decode_steps = st.decode_steps; }
      probes.push_back(measure_read_bandwidth());
      const double rate = wbytes * double(st.decode_steps) / st.decode_seconds;
      rates.push_back(rate);
      ratios.push_back(rate / std::max(probes[probes.size() - 2], probes.back()));
    }
    std::printf("%s decode runs: ", dts.c_str());
    for (size_t i = 0; i < ratios.size(); i++)
      std::printf("%s%.1f GB/s of %.1f (%.1f%%)", i ? ", " : "", rates[i] / 1e9,
                  std::max(probes[i], probes[i + 1]) / 1e9, 100 * ratios[i]);
    std::printf("\n");
    std::vector<double> sorted = ratios;
    std::sort(sorted.begin(), sorted.end());
    const double median_ratio = sorted[sorted.size() / 2];
    const double n = double(prompt);
    const double layer_params = double(cfg.q_dim() * cfg.hidden_size * 2 + cfg.kv_dim() * cfg.hidden_size * 2 +
                                       3 * cfg.hidden_size * cfg.intermediate_size);
    const double flops = 2.0 * layer_params * n * double(cfg.num_hidden_layers) +
                         4.0 * double(cfg.q_dim()) * (n * (n + 1) / 2) * double(cfg.num_hidden_layers) +
                         2.0 * double(cfg.vocab_size * cfg.hidden_size);
    const double pf_tok_s = n / best.prefill_seconds;
    const double pf_flops = flops / best.prefill_seconds;
    const double dec_tok_s = double(best.decode_steps) / best.decode_seconds;
    std::printf("%s prefill: %.1f tok/s, %.1f GFLOP/s = %s of the %s GEMM peak\n", dts.c_str(), pf_tok_s, pf_flops / 1e9,
                peak > 0 ? roofline_percent(pf_flops / peak, "GEMM peak").c_str() : "n/a", dtype_name(kind.gemm_dt));
    // ab_compare.sh reads this line: "NN.N% of the read bandwidth roofline", any note after it.
    std::printf("%s decode : %.2f tok/s (best run), %.2f GB/token -> %.1f GB/s; median of the runs: %.1f%% of the read "
                "bandwidth roofline%s\n\n",
                dts.c_str(), dec_tok_s, wbytes / 1e9, wbytes * dec_tok_s / 1e9, 100 * median_ratio,
                median_ratio > 1.0 ? " (above 100%: the bandwidth probe under-reads this machine; not a result)" : "");
  }
  return 0;
}
