#include "engine/kv_perplexity.h"

namespace oar {

PerplexityResult perplexity_with_kv(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t ctx, KVQuant quant,
                                    const KVStaticScales* static_scales,
                                    const std::function<void(int64_t, int64_t)>& progress) {
  return perplexity(model, tokens, ctx, progress, quant, static_scales);
}

}  // namespace oar
