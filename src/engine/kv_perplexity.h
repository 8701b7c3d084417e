// Perplexity with the KV cache in a chosen format: the same windows as oar::perplexity (infer/generator.h),
// each prefilled through the cache, so every attention read goes through the (possibly int8) cache. This is
// how `oar perplexity --cachekv_int8` measures what int8 K/V cost in accuracy.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/generator.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace oar {

// static_scales is needed for KVQuant::Int8Static. With KVQuant::None the result equals oar::perplexity's.
PerplexityResult perplexity_with_kv(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t ctx, KVQuant quant,
                                    const KVStaticScales* static_scales = nullptr,
                                    const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace oar
