// `oar perplexity`: exp(mean NLL) over non-overlapping windows of --ctx tokens of a text file (one BOS at the
// start of the text). For validating numerics now and quantization later. --cachekv_int8 [dynamic|static]
// prefills each window through an int8 KV cache (infer/generator.h) to measure what int8 K/V cost.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/fs.h"
#include "infer/generator.h"

namespace oar::cli {

Action add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, lora_path, input, dtype, quant_type;
    int64_t ctx = 512;
    int64_t group_size = -1;  // --weightonly_group_size
    int64_t max_tokens = 0;
    std::string cachekv_int8, cachekv_int8_type, cachekv_scales;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model)->required();
  app.add_option("--tokenizer_name_or_path", a->tokenizer);
  app.add_option("--lora_path", a->lora_path, "LoRA adapter directory merged into the weights at load");
  app.add_option("--input_file", a->input, "UTF-8 text")->required();
  app.add_option("--ctx", a->ctx, "window length in tokens")->check(positive_int());
  app.add_option("--dtype", a->dtype, "float32, bfloat16 or float16 (default: bfloat16 for 16-bit checkpoints, else float32)");
  app.add_option("--quant_type", a->quant_type, kQuantTypeHelp);
  app.add_option("--weightonly_group_size", a->group_size, "weight_only_int4's group: -1 (per channel), 64 or 128");
  app.add_option("--max_tokens", a->max_tokens, "use only the first N tokens (0: all)")->check(non_negative_int());
  CLI::Option* int8_opt = app.add_option("--cachekv_int8", a->cachekv_int8,
      "KV cache in int8: bare = dynamic (per token and kv head), or dynamic|static")->expected(0, 1);
  app.add_option("--cachekv_int8_type", a->cachekv_int8_type, "dynamic or static (as --cachekv_int8's value)");
  app.add_option("--cachekv_scales", a->cachekv_scales, "static scales (default: cachekv_scales.json in the model directory)");
  return [a, int8_opt]() -> int {
    match_export_flags(*a, int8_opt->count() > 0);  // an export runs with its own flags
    // The KV cache format: float32 unless --cachekv_int8 / --cachekv_int8_type name an int8 one.
    const KVCacheDType quant =
        parse_cachekv_int8(int8_opt->count() > 0, a->cachekv_int8, a->cachekv_int8_type, a->quant_type);
    const std::string kv = quant == KVCacheDType::Int8Static ? "static" : "dynamic";  // for the report
    std::string text = read_file(a->input);
    if (text.empty()) fail(a->input, "is empty: perplexity needs text to predict");
    LoadedModel lm = load_model_and_tokenizer(a->model, a->tokenizer, a->dtype, a->lora_path, a->quant_type, a->group_size);
    std::vector<int32_t> ids = lm.tokenizer->encode(text, true);
    if (a->max_tokens > 0 && int64_t(ids.size()) > a->max_tokens) ids.resize(size_t(a->max_tokens));
    if (ids.size() < 2)
      fail(a->input, "gives " + std::to_string(ids.size()) + " token" + (ids.size() == 1 ? "" : "s") +
                         (a->max_tokens > 0 ? " (with --max_tokens)" : "") + "; perplexity needs at least 2");
    KVStaticScales scales;
    if (quant == KVCacheDType::Int8Static) {
      scales = load_cachekv_scales(cachekv_scales_path_for(a->model, a->cachekv_scales), lm.model->config());
    }
    auto t0 = std::chrono::steady_clock::now();
    const bool tty = isatty(2);
    auto progress = [&](int64_t done, int64_t total) {
      if (!tty) return;
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rperplexity: window %lld/%lld, ETA %.0f s   ", (long long)done, (long long)total,
                   el / double(done) * double(total - done));
      if (done == total) std::fprintf(stderr, "\n");
    };
    PerplexityResult r = perplexity(*lm.model, ids, a->ctx, progress, quant, &scales);
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("perplexity: %.4f (mean NLL %.6f nats over %lld predicted tokens, %lld windows of %lld, %.1f tok/s)%s\n",
                r.perplexity, r.mean_nll, (long long)r.predicted_tokens, (long long)r.windows, (long long)a->ctx,
                double(ids.size()) / el, quant == KVCacheDType::F32 ? "" : (" with an int8 " + kv + " KV cache").c_str());
    if (quant != KVCacheDType::F32) {
      // What int8 costs and saves: the same windows through a float32 KV cache, and the cache's size per block.
      PerplexityResult ref = perplexity(*lm.model, ids, a->ctx, progress);
      const LlamaConfig& cfg = lm.model->config();
      const double b8 = double(KVCache::bytes_per_block(cfg, 64, quant));
      const double b32 = double(KVCache::bytes_per_block(cfg, 64, KVCacheDType::F32));
      std::printf("float32 KV cache: perplexity %.4f; int8 %s changes it by %+.3f%% (%+.5f nats per token)\n",
                  ref.perplexity, kv.c_str(), 100.0 * (r.perplexity / ref.perplexity - 1.0), r.mean_nll - ref.mean_nll);
      std::printf("KV cache memory: int8 %.0f bytes per token vs float32 %.0f (%.2fx; %.2fx of a 16-bit cache)\n",
                  b8 / 64, b32 / 64, b8 / b32, 2.0 * b8 / b32);
    }
    return 0;
  };
}

}  // namespace oar::cli
