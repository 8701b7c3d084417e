// `oar predict`: PaddleNLP predictor.py's flags and defaults on the plain generation path, and with
// --block_attn on the serving engine (paged KV blocks, continuous batching, optional int8 KV cache).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "core/cpu_info.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/line_reader.h"
#include "engine/engine.h"
#include "infer/generator.h"
#include "infer/roofline.h"
#include "io/packed_model.h"

namespace oar::cli {
namespace {

struct PredictArgs {
  std::string model, tokenizer, lora_path, dtype, quant_type, data_file, output_file, prompt, decode_strategy = "sampling", device = "cpu";
  int64_t group_size = -1;  // --weightonly_group_size
  int64_t batch_size = 1, src_length = 1024, max_length = 1024, top_k = 0, seed = 42;
  double top_p = 0.7, temperature = 0.95, repetition_penalty = 1.0;
  bool benchmark = false;
  bool prompt_given = false;  // --prompt "" is a valid (empty) prompt: generation from BOS alone
  bool src_length_given = false;
  int64_t bench_warmup = 1, bench_rounds = 2;
  // --block_attn: the serving engine. PaddleNLP's flags (bools also as "--flag true|false|1|0"), then ours.
  std::string block_attn, cachekv_int8, cachekv_int8_type, cachekv_scales, inference_model, mode = "dynamic";
  int64_t block_size = 64, max_num_batched_tokens = 2048;
  double kv_cache_memory_gb = 1.0;
};

struct Input {
  std::string src;
  nlohmann::json tgt;  // passed through when present
  bool has_tgt = false;
};

std::vector<Input> read_inputs(const PredictArgs& a) {
  std::vector<Input> in;
  if (!a.data_file.empty()) {
    LineReader lines(a.data_file);
    std::string line;
    while (lines.next(line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = lines.where();
      nlohmann::json j = parse_json(line, where);
      if (!j.is_object() || !j.contains("src")) fail(where, "expected an object with \"src\"");
      Input x;
      if (j["src"].is_string()) x.src = j["src"].get<std::string>();
      else if (j["src"].is_array() && !j["src"].empty() && j["src"].back().is_string())
        x.src = j["src"].back().get<std::string>();  // multi-turn without a chat template: the newest turn
      else fail(where, "\"src\" must be a string or a list of strings");
      if (j.contains("tgt")) { x.tgt = j["tgt"]; x.has_tgt = true; }
      in.push_back(std::move(x));
    }
    if (in.empty()) fail(a.data_file, "no input lines");
  } else if (a.prompt_given) {
    in.push_back({a.prompt, {}, false});
  } else if (!isatty(0)) {
    LineReader lines(stdin, "standard input");
    std::string line;
    while (lines.next(line))
      if (!line.empty()) in.push_back({line, {}, false});
  }
  if (in.empty()) {
    // PaddleNLP's default when no data is given
    for (int64_t i = 0; i < a.batch_size; i++) in.push_back({"解释一下温故而知新", {}, false});
  }
  return in;
}

SamplingParams sampling_of(const PredictArgs& a) {
  SamplingParams p;
  if (a.decode_strategy == "greedy_search") {
    p.greedy = true;
    p.top_p = 0;  // as PaddleNLP: greedy_search forces top_p 0 and temperature 1
    p.temperature = 1;
  } else if (a.decode_strategy == "sampling") {
    p.top_p = a.top_p;
    p.temperature = a.temperature;
    p.top_k = a.top_k;
  } else {
    throw Error("--decode_strategy: '" + a.decode_strategy + "' is not supported (greedy_search or sampling)");
  }
  p.repetition_penalty = a.repetition_penalty;
  p.seed = uint64_t(a.seed);
  p.validate();
  return p;
}

// How many tokens of a prompt are kept: --src_length, and never so many that nothing can be generated (a
// default --src_length of 1024 on a 512-position model keeps the last 511).
int64_t prompt_limit(const PredictArgs& a, const LlamaModel& m) {
  const int64_t room = m.max_positions() - (a.max_length > 0 ? 1 : 0);
  return std::max<int64_t>(1, std::min(a.src_length, room));
}

// PaddleNLP asserts src_length (+ max_length) <= max_position_embeddings: an explicit --src_length beyond the
// model's context cannot be honoured.
void check_src_length(const PredictArgs& a, const LlamaModel& m) {
  if (a.src_length_given && a.src_length > m.max_positions())
    fail("--src_length", std::to_string(a.src_length) + " is larger than the model's context of " +
                             std::to_string(m.max_positions()) + " tokens");
}

std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& text, int64_t src_length) {
  std::vector<int32_t> ids = tok.encode(text, true);
  // Left truncation keeps the end of the prompt (PaddleNLP truncation_side="left"); BOS stays first.
  if (int64_t(ids.size()) > src_length) {
    std::vector<int32_t> t;
    if (tok.bos_id() >= 0 && ids[0] == tok.bos_id()) t.push_back(ids[0]);
    t.insert(t.end(), ids.end() - (src_length - int64_t(t.size())), ids.end());
    ids = std::move(t);
  }
  return ids;
}

int run_benchmark(const PredictArgs& a, LoadedModel& lm, const SamplingParams& sp) {
  const Tokenizer& tok = *lm.tokenizer;
  LlamaModel& model = *lm.model;
  const LlamaConfig& cfg = model.config();
  // PaddleNLP's benchmark input: "hello world, how are you?" followed by padding, cut to src_length tokens.
  std::vector<int32_t> prompt = tok.encode("hello world, how are you?", true);
  int32_t pad = tok.pad_id() >= 0 ? tok.pad_id() : (tok.eos_ids().empty() ? 0 : tok.eos_ids()[0]);
  prompt.resize(size_t(a.src_length), pad);
  std::vector<GenerationRequest> reqs(size_t(a.batch_size));
  for (auto& r : reqs) {
    r.prompt = prompt;
    r.max_new_tokens = a.max_length;
    r.sampling = sp;
    r.ignore_eos = true;  // every request decodes exactly max_length tokens
  }
  Generator gen(model);
  std::fprintf(stderr, "benchmark: %lld warm-up and %lld timed rounds, batch %lld, %lld prompt + %lld new tokens\n",
               (long long)a.bench_warmup, (long long)a.bench_rounds, (long long)a.batch_size, (long long)a.src_length,
               (long long)a.max_length);
  for (int64_t i = 0; i < a.bench_warmup; i++) gen.run(reqs, {});
  GenerationStats sum;
  int64_t output_tokens = 0;
  double elapsed = 0;
  for (int64_t i = 0; i < a.bench_rounds; i++) {
    GenerationStats st;
    auto t0 = std::chrono::steady_clock::now();
    auto outs = gen.run(reqs, {}, &st);
    elapsed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto& o : outs) output_tokens += int64_t(o.tokens.size());
    sum.prefill_seconds += st.prefill_seconds;
    sum.decode_seconds += st.decode_seconds;
    sum.prompt_tokens += st.prompt_tokens;
    sum.generated_tokens += st.generated_tokens;
    sum.decode_steps += st.decode_steps;
    sum.time_to_first_token += st.time_to_first_token;
    sum.kv_cache_bytes = st.kv_cache_bytes;
  }
  const double R = double(a.bench_rounds);
  std::printf("Avg Elapse time is:  %.6f\n", elapsed / R);
  std::printf("Output tokens is:  %lld\n", (long long)output_tokens);
  std::printf("Input length is: %lld, Output length is: %lld, bs is: %lld, IPS: %.3f tokens/s, QPS: %.3f requests/s.\n",
              (long long)a.src_length, (long long)a.max_length, (long long)a.batch_size, double(output_tokens) / elapsed,
              double(a.batch_size) * R / elapsed);

  // Ceilings measured now, on this machine.
  const double bw = measure_read_bandwidth();
  // The GEMM the projections run: a8w8's integer one; float16 and weight-only quantized weights go through the
  // float32 GEMM (converted in blocks); else the compute dtype's.
  const WeightFormat proj = model.projection_format();
  DType gemm_dtype = model.dtype();
  if (proj == WeightFormat::A8W8) gemm_dtype = DType::I8;
  else if (proj == WeightFormat::F16 || is_quantized(proj) || model.dtype() == DType::F16) gemm_dtype = DType::F32;
  const double gemm_peak = measure_gemm_flops(gemm_dtype, 512, 2048, 2048);
  // Prefill FLOPs: every matrix once per prompt token, attention's two products over the causal triangle,
  // the LM head for the last token only.
  const double n = double(a.src_length);
  const double layer_params = double(cfg.q_dim() * cfg.hidden_size * 2 + cfg.kv_dim() * cfg.hidden_size * 2 +
                                     3 * cfg.hidden_size * cfg.intermediate_size);
  const double prefill_flops_per_seq = 2.0 * layer_params * n * double(cfg.num_hidden_layers) +
                                       4.0 * double(cfg.q_dim()) * (n * (n + 1) / 2) * double(cfg.num_hidden_layers) +
                                       2.0 * double(cfg.vocab_size * cfg.hidden_size);
  const double prefill_tok_s = double(sum.prompt_tokens) / sum.prefill_seconds;
  const double prefill_flops = prefill_flops_per_seq * double(a.batch_size) * R / sum.prefill_seconds;
  const double decode_tok_s = double(sum.generated_tokens - int64_t(a.batch_size) * a.bench_rounds) / sum.decode_seconds;
  const double steps_s = double(sum.decode_steps) / sum.decode_seconds;
  const double weight_bytes = double(model.decode_weight_bytes());
  std::printf("oar: dtype %s, weights %s, kernels %s, threads %d\n", dtype_name(model.dtype()),
              weight_format_name(model.projection_format()), kernels_for(Device::CPU).name(),
              cpu_info().logical_cpus);
  if (gemm_peak > 0)
    std::printf("oar: prefill %.1f tok/s (%.1f GFLOP/s = %s of the measured %s GEMM peak %.1f GFLOP/s)\n", prefill_tok_s,
                prefill_flops / 1e9, roofline_percent(prefill_flops / gemm_peak, "GEMM peak").c_str(), dtype_name(gemm_dtype),
                gemm_peak / 1e9);
  else
    std::printf("oar: prefill %.1f tok/s (%.1f GFLOP/s; this CPU has no %s GEMM to measure a peak with)\n", prefill_tok_s,
                prefill_flops / 1e9, dtype_name(gemm_dtype));
  std::printf("oar: decode %.2f tok/s (%.2f steps/s), time to first token %.3f s\n", decode_tok_s, steps_s,
              sum.time_to_first_token / R);
  std::printf("oar: decode roofline %s (%.2f GB of weights per step x %.2f steps/s = %.1f GB/s of the measured %.1f GB/s)\n",
              roofline_percent(weight_bytes * steps_s / bw).c_str(), weight_bytes / 1e9, steps_s,
              weight_bytes * steps_s / 1e9, bw / 1e9);
  std::printf("oar: peak memory %.2f GiB (KV cache %.1f MiB)\n", double(peak_rss_bytes()) / (1 << 30),
              double(sum.kv_cache_bytes) / (1 << 20));
  return 0;
}

// ---- --block_attn: the serving engine ----

// PaddleNLP's --mode: static runs an export (oar export's directory), dynamic a checkpoint; oar's dynamic mode also
// loads an export, as serve and perplexity do.
void check_mode(PredictArgs& a, bool block_size_given) {
  if (a.mode != "dynamic" && a.mode != "static") throw Error("--mode " + a.mode + ": expected dynamic or static");
  const std::optional<ExportSettings> s = read_export_settings(a.model);
  if (a.mode == "static" && !s)
    fail(a.model, "--mode static runs an oar export (config.json with infer_model_* keys and " +
                      std::string(kPackedWeightsFile) + "); export it with oar export, or use --mode dynamic");
  match_export_block_size(a.model, block_size_given, a.block_size);
}

// --cachekv_int8 and --cachekv_int8_type: parsed as by every command (model_loading.h).
KVCacheDType kv_dtype_of(const CLI::Option* int8_opt, const PredictArgs& a) {
  return parse_cachekv_int8(int8_opt->count() > 0, a.cachekv_int8, a.cachekv_int8_type, a.quant_type);
}

EngineConfig engine_config_of(const PredictArgs& a, KVCacheDType kv) {
  if (!(a.kv_cache_memory_gb > 0) || !std::isfinite(a.kv_cache_memory_gb)) throw Error("--kv_cache_memory_gb must be positive");
  EngineConfig ec;
  ec.block_size = a.block_size;
  ec.max_num_seqs = a.batch_size;
  ec.max_num_batched_tokens = a.max_num_batched_tokens;
  ec.kv_cache_memory_bytes = size_t(a.kv_cache_memory_gb * double(size_t(1) << 30));
  ec.kv_dtype = kv;
  if (kv == KVCacheDType::Int8Static) {
    // PaddleNLP reads the PTQ output cachekv_scales.json from the model directory.
    ec.cachekv_scales_path = cachekv_scales_path_for(a.model, a.cachekv_scales);
  }
  return ec;
}


// Every input goes to the engine at once; --batch_size bounds how many run together. Same outputs and output
// file as the plain path (per-request seeds seed + i).
int run_block_attn(const PredictArgs& a, LoadedModel& lm, const SamplingParams& sp, const std::vector<Input>& inputs,
                   EngineConfig ec) {
  const Tokenizer& tok = *lm.tokenizer;
  ec.max_waiting = std::max<int64_t>(int64_t(inputs.size()), 1);
  Engine eng(*lm.model, tok, ec);
  std::vector<uint64_t> ids;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < inputs.size(); i++) {
    RequestParams rp;
    std::vector<int32_t> prompt = encode_prompt(tok, inputs[i].src, prompt_limit(a, *lm.model));
    prompts.push_back(prompt);
    rp.max_new_tokens = std::min<int64_t>(a.max_length, lm.model->max_positions() - int64_t(prompt.size()));
    rp.sampling = sp;
    rp.sampling.seed = uint64_t(a.seed) + i;
    ids.push_back(eng.add_request(std::move(prompt), rp));
  }
  std::vector<std::vector<int32_t>> outs(inputs.size());
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < ids.size(); i++) index[ids[i]] = i;
  const bool stream = a.output_file.empty() && inputs.size() == 1;
  while (eng.has_work()) {
    for (const RequestOutput& o : eng.step()) {
      auto& t = outs[index.at(o.request_id)];
      t.insert(t.end(), o.new_tokens.begin(), o.new_tokens.end());
      if (stream) {
        std::fwrite(o.new_text.data(), 1, o.new_text.size(), stdout);
        std::fflush(stdout);
      }
    }
  }
  if (stream) std::printf("\n");
  std::fflush(stdout);  // the text's newline before the summary on stderr (both may go to one file)
  const EngineMetrics m = eng.metrics();
  std::fprintf(stderr, "oar: engine: %zu requests, at most %lld running; prefix cache %lld of %lld prompt blocks hit (%.1f%%); "
               "%lld preemptions; %lld KV blocks of %lld positions\n",
               inputs.size(), (long long)ec.max_num_seqs, (long long)m.prefix_cache_hits, (long long)m.prefix_cache_queries,
               m.prefix_cache_queries ? 100.0 * double(m.prefix_cache_hits) / double(m.prefix_cache_queries) : 0.0,
               (long long)m.preemptions, (long long)m.blocks_total, (long long)ec.block_size);
  std::string results;
  for (size_t i = 0; i < inputs.size(); i++) {
    std::string text = decode_continuation(tok, prompts[i], outs[i]);  // the text the output adds to its prompt
    if (!stream && a.output_file.empty()) std::printf("%s\n", text.c_str());
    nlohmann::json j;
    j["src"] = inputs[i].src;
    if (inputs[i].has_tgt) j["tgt"] = inputs[i].tgt;
    j["output"] = text;
    j["output_ids"] = outs[i];
    results += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (!a.output_file.empty()) write_file_atomic(a.output_file, results);
  return 0;
}

// Nearest-rank percentile of the samples (0 when none).
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t k = size_t(std::ceil(p / 100.0 * double(v.size())));
  return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
}

// PaddleNLP's benchmark workload through the engine: --batch_size requests submitted together each round, each
// decoding exactly --max_length tokens. Prefix caching is off so that every request computes its prompt, as in
// PaddleNLP. TTFT per request from submission to its first token; TPOT = (finish - first token) / (tokens - 1).
int run_block_benchmark(const PredictArgs& a, LoadedModel& lm, const SamplingParams& sp, EngineConfig ec) {
  const Tokenizer& tok = *lm.tokenizer;
  std::vector<int32_t> prompt = tok.encode("hello world, how are you?", true);
  int32_t pad = tok.pad_id() >= 0 ? tok.pad_id() : (tok.eos_ids().empty() ? 0 : tok.eos_ids()[0]);
  prompt.resize(size_t(a.src_length), pad);
  ec.enable_prefix_caching = false;
  ec.max_waiting = a.batch_size;
  Engine eng(*lm.model, tok, ec);
  RequestParams rp;
  rp.sampling = sp;
  rp.max_new_tokens = a.max_length;
  rp.ignore_eos = true;
  std::fprintf(stderr, "benchmark: --block_attn, %lld warm-up and %lld timed rounds, %lld requests, %lld prompt + %lld new tokens\n",
               (long long)a.bench_warmup, (long long)a.bench_rounds, (long long)a.batch_size, (long long)a.src_length,
               (long long)a.max_length);
  std::vector<double> ttft, tpot, t1, t2;
  int64_t output_tokens = 0;
  double elapsed = 0;
  for (int64_t round = 0; round < a.bench_warmup + a.bench_rounds; round++) {
    const bool timed = round >= a.bench_warmup;
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < a.batch_size; i++) {
      rp.sampling.seed = uint64_t(a.seed) + uint64_t(i);
      eng.add_request(prompt, rp);
    }
    int64_t tokens = 0;
    while (eng.has_work())
      for (const RequestOutput& o : eng.step()) tokens += int64_t(o.new_tokens.size());
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    eng.take_latency_samples(t1, t2);
    if (!timed) continue;
    elapsed += dt;
    output_tokens += tokens;
    ttft.insert(ttft.end(), t1.begin(), t1.end());
    tpot.insert(tpot.end(), t2.begin(), t2.end());
  }
  const double R = double(a.bench_rounds);
  std::printf("Avg Elapse time is:  %.6f\n", elapsed / R);
  std::printf("Output tokens is:  %lld\n", (long long)output_tokens);
  std::printf("Input length is: %lld, Output length is: %lld, bs is: %lld, IPS: %.3f tokens/s, QPS: %.3f requests/s.\n",
              (long long)a.src_length, (long long)a.max_length, (long long)a.batch_size, double(output_tokens) / elapsed,
              double(a.batch_size) * R / elapsed);
  const EngineMetrics m = eng.metrics();
  std::printf("oar: block_attn: total throughput %.1f tok/s (prompt + generated), generated %.1f tok/s, %.3f requests/s\n",
              double(output_tokens + int64_t(a.batch_size) * a.bench_rounds * a.src_length) / elapsed,
              double(output_tokens) / elapsed, double(a.batch_size) * R / elapsed);
  std::printf("oar: time to first token p50 %.4f s, p99 %.4f s\n", percentile(ttft, 50), percentile(ttft, 99));
  std::printf("oar: time per output token p50 %.5f s, p99 %.5f s\n", percentile(tpot, 50), percentile(tpot, 99));
  std::printf("oar: KV cache %s, %lld blocks of %lld positions, %.1f MiB (%zu bytes per block), %lld preemptions\n",
              kv_cache_dtype_name(ec.kv_dtype), (long long)m.blocks_total, (long long)ec.block_size,
              double(m.kv_cache_bytes) / (1 << 20), m.kv_bytes_per_block, (long long)m.preemptions);
  std::printf("oar: dtype %s, weights %s, kernels %s, threads %d, peak memory %.2f GiB\n", dtype_name(lm.model->dtype()),
              weight_format_name(lm.model->projection_format()),
              kernels_for(Device::CPU).name(), cpu_info().logical_cpus, double(peak_rss_bytes()) / (1 << 30));
  return 0;
}

}  // namespace

Action add_predict(CLI::App& app) {
  auto a = std::make_shared<PredictArgs>();
  app.add_option("--model_name_or_path", a->model, "Hugging Face directory or llama2.c checkpoint")->required();
  app.add_option("--tokenizer_name_or_path", a->tokenizer, "tokenizer file or directory (default: beside the model)");
  app.add_option("--lora_path", a->lora_path, "LoRA adapter directory (PEFT or PaddleNLP) merged into the weights at load");
  app.add_option("--dtype", a->dtype, "float32, bfloat16 or float16 (default: bfloat16 for 16-bit checkpoints, else float32)");
  app.add_option("--quant_type", a->quant_type, kQuantTypeHelp);
  app.add_option("--weightonly_group_size", a->group_size, "weight_only_int4's group: -1 (per channel), 64 or 128");
  app.add_option("--batch_size", a->batch_size, "prompts generated together")->check(positive_int());
  CLI::Option* src_length_opt = app.add_option("--src_length", a->src_length, "maximum prompt tokens (longer prompts keep their end)")->check(positive_int());
  app.add_option("--max_length", a->max_length, "maximum new tokens")->check(non_negative_int());
  app.add_option("--decode_strategy", a->decode_strategy, "greedy_search or sampling");
  app.add_option("--top_k", a->top_k, "0: off")->check(non_negative_int());
  app.add_option("--top_p", a->top_p, "nucleus sampling mass");
  app.add_option("--temperature", a->temperature);
  app.add_option("--repetition_penalty", a->repetition_penalty);
  app.add_option("--seed", a->seed)->check(ints(std::numeric_limits<int64_t>::min()));
  app.add_option("--data_file", a->data_file, "JSON lines with \"src\" (and optional \"tgt\")");
  app.add_option("--output_file", a->output_file, "JSON lines: src, tgt, output, output_ids");
  CLI::Option* prompt_opt = app.add_option("--prompt", a->prompt, "one prompt (else --data_file, else stdin lines)");
  app.add_option("--device", a->device, "cpu");
  app.add_flag("--benchmark", a->benchmark, "time generation and print PaddleNLP's benchmark line and ours");
  app.add_option("--benchmark_warmup", a->bench_warmup, "warm-up rounds (PaddleNLP: 10)")->check(non_negative_int());
  app.add_option("--benchmark_rounds", a->bench_rounds, "timed rounds (PaddleNLP: 100)")->check(positive_int());
  CLI::Option* block_opt = app.add_option("--block_attn", a->block_attn,
      "serve the inputs through the engine: paged KV blocks, continuous batching (--batch_size: running requests at most)")
      ->expected(0, 1);
  CLI::Option* block_size_opt =
      app.add_option("--block_size", a->block_size, "KV positions per block (--block_attn)")->check(positive_int());
  CLI::Option* inference_opt = app.add_option("--inference_model", a->inference_model,
      "PaddleNLP's fused inference model: oar's predictor always is one (accepted as true or false)")->expected(0, 1);
  app.add_option("--mode", a->mode,
                 "dynamic (a checkpoint, or an export) or static (an oar export only); an export runs with its own flags");
  CLI::Option* int8_opt = app.add_option("--cachekv_int8", a->cachekv_int8,
      "int8 KV cache (--block_attn): bare or true = dynamic scales; also dynamic|static")->expected(0, 1);
  app.add_option("--cachekv_int8_type", a->cachekv_int8_type, "dynamic (per token and head) or static (cachekv_scales.json)");
  app.add_option("--cachekv_scales", a->cachekv_scales, "static int8 scales (default: cachekv_scales.json in the model directory)");
  app.add_option("--kv_cache_memory_gb", a->kv_cache_memory_gb, "KV cache budget in GiB (--block_attn; default 1)")->check(positive_real());
  app.add_option("--max_num_batched_tokens", a->max_num_batched_tokens, "tokens per engine step: prefill chunks + decodes (--block_attn)")
      ->check(positive_int());
  return [a, prompt_opt, src_length_opt, block_opt, int8_opt, inference_opt, block_size_opt]() -> int {
    a->prompt_given = prompt_opt->count() > 0;
    a->src_length_given = src_length_opt->count() > 0;
    const bool block_attn = flag_value(block_opt, a->block_attn);
    flag_value(inference_opt, a->inference_model);  // checked, no effect
    check_mode(*a, block_size_opt->count() > 0);
    const bool kv_asked = int8_opt->count() > 0 || !a->cachekv_int8_type.empty() || a->quant_type == "a8w8c8";
    match_export_flags(*a, int8_opt->count() > 0);  // an export runs with its own flags
    const KVCacheDType kv = kv_dtype_of(int8_opt, *a);
    if (!block_attn && kv != KVCacheDType::F32)
      throw Error(!kv_asked ? a->model + " was exported with an int8 KV cache (infer_model_cachekv_int8_type " +
                                  a->cachekv_int8_type + "): run it with --block_attn (the engine's KV cache)"
                            : std::string(a->quant_type == "a8w8c8" ? "--quant_type a8w8c8" : "--cachekv_int8") +
                                  " needs --block_attn (the engine's KV cache)");
    std::optional<EngineConfig> ec;
    if (block_attn) ec = engine_config_of(*a, kv);
    if (a->device != "cpu") throw Error("--device " + a->device + ": this build runs on cpu only");
    SamplingParams sp = sampling_of(*a);
    // Inputs are read and checked before the (slow) model load.
    std::vector<Input> inputs;
    if (!a->benchmark) inputs = read_inputs(*a);
    LoadedModel lm = load_model_and_tokenizer(a->model, a->tokenizer, a->dtype, a->lora_path, a->quant_type, a->group_size);
    check_src_length(*a, *lm.model);
    if (ec && a->benchmark) return run_block_benchmark(*a, lm, sp, *ec);
    if (ec) return run_block_attn(*a, lm, sp, inputs, *ec);
    if (a->benchmark) return run_benchmark(*a, lm, sp);
    const Tokenizer& tok = *lm.tokenizer;
    Generator gen(*lm.model);
    const bool stream = a->output_file.empty() && inputs.size() == 1;
    std::string results;
    for (size_t b = 0; b < inputs.size(); b += size_t(a->batch_size)) {
      size_t e = std::min(inputs.size(), b + size_t(a->batch_size));
      std::vector<GenerationRequest> reqs;
      for (size_t i = b; i < e; i++) {
        GenerationRequest r;
        r.prompt = encode_prompt(tok, inputs[i].src, prompt_limit(*a, *lm.model));
        r.max_new_tokens = std::min<int64_t>(a->max_length, lm.model->max_positions() - int64_t(r.prompt.size()));
        r.sampling = sp;
        r.sampling.seed = uint64_t(a->seed) + i;
        reqs.push_back(std::move(r));
      }
      StreamDecoder sd(tok, reqs[0].prompt);  // streams only with one input: it continues that prompt
      auto on_token = [&](size_t, int32_t t) {
        if (!stream) return;
        std::string s = sd.push(t);
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
      };
      auto outs = gen.run(reqs, tok.eos_ids(), nullptr, on_token);
      if (stream) {
        std::string s = sd.flush();
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::printf("\n");
        std::fflush(stdout);
      }
      for (size_t i = b; i < e; i++) {
        std::vector<int32_t> ids = outs[i - b].tokens;
        std::string text = decode_continuation(tok, reqs[i - b].prompt, ids);
        if (!stream && a->output_file.empty()) std::printf("%s\n", text.c_str());
        nlohmann::json j;
        j["src"] = inputs[i].src;
        if (inputs[i].has_tgt) j["tgt"] = inputs[i].tgt;
        j["output"] = text;
        j["output_ids"] = ids;
        results += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      }
    }
    if (!a->output_file.empty()) write_file_atomic(a->output_file, results);
    return 0;
  };
}

}  // namespace oar::cli
