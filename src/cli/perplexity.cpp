// `oar perplexity`: exp(mean NLL) over non-overlapping windows of --ctx tokens of a text file (one BOS at the
// start of the text). For validating numerics now and quantization later.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/fs.h"
#include "infer/generator.h"

namespace oar::cli {

Action add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, input, dtype;
    int64_t ctx = 512;
    int64_t max_tokens = 0;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model)->required();
  app.add_option("--tokenizer_name_or_path", a->tokenizer);
  app.add_option("--input_file", a->input, "UTF-8 text")->required();
  app.add_option("--ctx", a->ctx, "window length in tokens")->check(CLI::PositiveNumber);
  app.add_option("--dtype", a->dtype, "float32 or bfloat16");
  app.add_option("--max_tokens", a->max_tokens, "use only the first N tokens (0: all)")->check(CLI::NonNegativeNumber);
  return [a]() -> int {
    std::string text = read_file(a->input);
    LoadedModel lm = load_model_and_tokenizer(a->model, a->tokenizer, a->dtype);
    std::vector<int32_t> ids = lm.tokenizer->encode(text, true);
    if (a->max_tokens > 0 && int64_t(ids.size()) > a->max_tokens) ids.resize(size_t(a->max_tokens));
    auto t0 = std::chrono::steady_clock::now();
    const bool tty = isatty(2);
    PerplexityResult r = perplexity(*lm.model, ids, a->ctx, [&](int64_t done, int64_t total) {
      if (!tty) return;
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rperplexity: window %lld/%lld, ETA %.0f s   ", (long long)done, (long long)total,
                   el / double(done) * double(total - done));
      if (done == total) std::fprintf(stderr, "\n");
    });
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("perplexity: %.4f (mean NLL %.6f nats over %lld predicted tokens, %lld windows of %lld, %.1f tok/s)\n",
                r.perplexity, r.mean_nll, (long long)r.predicted_tokens, (long long)r.windows, (long long)a->ctx,
                double(ids.size()) / el);
    return 0;
  };
}

}  // namespace oar::cli
