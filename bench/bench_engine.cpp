// Aggregate decode throughput of the serving engine on a TinyLlama-1.1B-shaped model (random bfloat16 weights,
// built in memory): 1 stream, then N concurrent streams (N requests with short prompts submitted together, all
// running at once), and the ratio. The bar: 16 streams >= 5x one stream, because one pass over the
// weights serves all 16 tokens of a step.
//
//   bench_engine [--streams 1,16] [--prompt 32] [--decode 64] [--dtype bf16|f32] [--kv f32|int8] [--repeats 2]
//                [--plain 1]   (also the plain Generator's batched decode, to separate engine overhead from kernels)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "core/cpu_info.h"
#include "engine/engine.h"
#include "infer/generator.h"
#include "kernels/kernels.h"

using namespace oar;
using namespace oar::bench;

namespace {

// The engine needs a tokenizer only for EOS and detokenization; the benchmark ignores EOS.
class NullTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
  std::string token_bytes(int32_t, bool) const override { return ""; }
  int32_t vocab_size() const override { return 32000; }
  int32_t bos_id() const override { return 1; }
  std::vector<int32_t> eos_ids() const override { return {2}; }
  std::string id_to_piece(int32_t) const override { return ""; }
  bool is_special(int32_t) const override { return true; }
  std::string kind() const override { return "null"; }
};

struct Run {
  double decode_tok_s = 0, step_ms = 0, ttft_s = 0;
  int64_t decode_steps = 0, decode_tokens = 0;
};

// Submits n requests together; the first step prefills them all (n * prompt <= the step budget) and picks their
// first tokens; every later step decodes one token per stream. Decode throughput = tokens of the later steps
// over their time.
Run run_streams(LlamaModel& model, int64_t n, int64_t prompt, int64_t decode, KVCacheDType kv) {
  NullTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 64;
  cfg.max_num_seqs = n;
  cfg.max_num_batched_tokens = std::max<int64_t>(2048, n * prompt);
  cfg.num_blocks = n * ((prompt + decode + cfg.block_size - 1) / cfg.block_size);
  cfg.kv_dtype = kv;
  cfg.enable_prefix_caching = false;
  Engine e(model, tok, cfg);
  RequestParams rp;
  rp.sampling.greedy = true;
  rp.max_new_tokens = decode;
  rp.ignore_eos = true;
  const int64_t V = model.config().vocab_size;
  for (int64_t s = 0; s < n; s++) {
    std::vector<int32_t> p(static_cast<size_t>(prompt));
    for (int64_t i = 0; i < prompt; i++) p[size_t(i)] = int32_t((1 + s * 7919 + i * 104729) % V);
    e.add_request(p, rp);
  }
  e.step();  // prefill + first tokens
  Run r;
  const double t0 = now_s();
  while (e.has_work()) {
    for (const RequestOutput& o : e.step()) r.decode_tokens += int64_t(o.new_tokens.size());
    r.decode_steps++;
  }
  const double dt = now_s() - t0;
  std::vector<double> ttft, tpot;
  e.take_latency_samples(ttft, tpot);
  r.decode_tok_s = double(r.decode_tokens) / dt;
  r.step_ms = 1e3 * dt / double(r.decode_steps);
  r.ttft_s = ttft.empty() ? 0 : *std::max_element(ttft.begin(), ttft.end());
  return r;
}

// The plain path's batched decode of the same workload (no scheduler, blocks reserved up front).
double plain_decode_tok_s(LlamaModel& model, int64_t n, int64_t prompt, int64_t decode) {
  const int64_t V = model.config().vocab_size;
  std::vector<GenerationRequest> reqs(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; s++) {
    auto& r = reqs[size_t(s)];
    for (int64_t i = 0; i < prompt; i++) r.prompt.push_back(int32_t((1 + s * 7919 + i * 104729) % V));
    r.max_new_tokens = decode;
    r.sampling.greedy = true;
    r.ignore_eos = true;
  }
  Generator gen(model);
  GenerationStats st;
  gen.run(reqs, {}, &st);
  return double(st.generated_tokens - n) / st.decode_seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t prompt = 32, decode = 64, repeats = 2, plain = 0;
  std::string streams_arg = "1,16", dts = "bf16", kvs = "f32";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--prompt")) prompt = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--decode")) decode = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--streams")) streams_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--dtype")) dts = argv[i + 1];
    else if (!std::strcmp(argv[i], "--kv")) kvs = argv[i + 1];
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--plain")) plain = std::stoll(argv[i + 1]);
  }
  std::vector<int64_t> streams;
  std::stringstream ss(streams_arg);
  for (std::string t; std::getline(ss, t, ',');) streams.push_back(std::stoll(t));
  const DType dt = dts == "f32" ? DType::F32 : DType::BF16;
  const KVCacheDType kv = kvs == "int8" ? KVCacheDType::Int8Dynamic : KVCacheDType::F32;

  const CpuInfo& ci = cpu_info();
  std::printf("machine: %s, %d threads, kernels %s\n", ci.model_name.c_str(), omp_get_max_threads(),
              kernels_for(Device::CPU).name());
  std::printf("model: TinyLlama-1.1B shape, random %s weights; KV cache %s, blocks of 64\n", dtype_name(dt),
              kv == KVCacheDType::F32 ? "float32" : "int8 dynamic");
  std::printf("workload: per stream a %lld-token prompt, then %lld greedy tokens; all streams submitted together\n\n",
              (long long)prompt, (long long)decode);
  auto model = random_model(tinyllama_1_1b(), dt);
  run_streams(*model, 1, prompt, 4, kv);  // warm-up: page in the weights, build the GEMM primitives
  double base = 0;
  for (int64_t n : streams) {
    Run best;
    for (int64_t r = 0; r < repeats; r++) {
      Run x = run_streams(*model, n, prompt, decode, kv);
      if (x.decode_tok_s > best.decode_tok_s) best = x;
    }
    if (base == 0) base = best.decode_tok_s;
    std::printf("%3lld stream%s: decode %8.2f tok/s aggregate (%6.2f per stream), %7.1f ms per step, TTFT %.3f s, "
                "%.2fx the %lld-stream rate\n",
                (long long)n, n == 1 ? " " : "s", best.decode_tok_s, best.decode_tok_s / double(n), best.step_ms,
                best.ttft_s, best.decode_tok_s / base, (long long)streams.front());
    if (plain) std::printf("     plain Generator, same workload: decode %8.2f tok/s\n", plain_decode_tok_s(*model, n, prompt, decode));
    std::fflush(stdout);
  }
  return 0;
}
