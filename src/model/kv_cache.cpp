#include "model/kv_cache.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"

namespace oar {

KVCache::KVCache(const LlamaConfig& cfg, int64_t num_blocks, int64_t block_size, KVCacheDType quant,
                 const KVStaticScales* static_scales, Backend& backend)
    : be_(backend), geometry_{num_blocks, block_size}, layers_(cfg.num_hidden_layers),
      kv_heads_(cfg.num_key_value_heads), head_dim_(cfg.head_dim), quant_(quant) {
  if (num_blocks <= 0 || block_size <= 0) throw Error("kv cache: need at least one block of at least one position");
  if (quant == KVCacheDType::Int8Static) {
    const size_t n = size_t(layers_ * kv_heads_);
    if (!static_scales || static_scales->k_absmax.size() != n || static_scales->v_absmax.size() != n)
      throw Error("kv cache: static int8 needs one K and one V scale per layer and kv head");
  }
  const DType vt = quant == KVCacheDType::F32 ? DType::F32 : DType::I8;
  for (int64_t l = 0; l < layers_; l++) {
    k_.push_back(be_.empty({num_blocks, kv_heads_, block_size, head_dim_}, vt));
    v_.push_back(be_.empty({num_blocks, kv_heads_, block_size, head_dim_}, vt));
    if (quant == KVCacheDType::Int8Dynamic) {
      k_scale_.push_back(be_.empty({num_blocks, kv_heads_, block_size}, DType::F32));
      v_scale_.push_back(be_.empty({num_blocks, kv_heads_, block_size}, DType::F32));
    } else if (quant == KVCacheDType::Int8Static) {
      // The kernels take the dequantization step absmax / 127.
      Tensor ks = Tensor::empty({kv_heads_}, DType::F32), vs = Tensor::empty({kv_heads_}, DType::F32);
      for (int64_t g = 0; g < kv_heads_; g++) {
        ks.data<float>()[g] = static_scales->k_absmax[size_t(l * kv_heads_ + g)] / 127.0f;
        vs.data<float>()[g] = static_scales->v_absmax[size_t(l * kv_heads_ + g)] / 127.0f;
      }
      k_scale_.push_back(be_.upload(ks));
      v_scale_.push_back(be_.upload(vs));
    }
  }
}

KVLayerView KVCache::layer(int64_t l) {
  KVLayerView v;
  v.num_blocks = geometry_.num_blocks;
  v.block_size = geometry_.block_size;
  v.kv_heads = kv_heads_;
  v.head_dim = head_dim_;
  if (quant_ == KVCacheDType::F32) {
    v.k = k_[size_t(l)].data<float>();
    v.v = v_[size_t(l)].data<float>();
    return v;
  }
  v.dtype = quant_;
  v.k8 = k_[size_t(l)].data<int8_t>();
  v.v8 = v_[size_t(l)].data<int8_t>();
  v.k_scale = k_scale_[size_t(l)].data<float>();
  v.v_scale = v_scale_[size_t(l)].data<float>();
  return v;
}

size_t KVCache::bytes_per_block(const LlamaConfig& cfg, int64_t block_size, KVCacheDType quant) {
  const size_t cells = size_t(2 * cfg.num_hidden_layers * cfg.num_key_value_heads * block_size);  // K and V rows
  switch (quant) {
    case KVCacheDType::F32: return cells * size_t(cfg.head_dim) * sizeof(float);
    case KVCacheDType::Int8Dynamic: return cells * (size_t(cfg.head_dim) + sizeof(float));  // values + one scale
    case KVCacheDType::Int8Static: return cells * size_t(cfg.head_dim);
  }
  return 0;
}

size_t KVCache::bytes() const {
  size_t b = 0;
  for (const auto* ts : {&k_, &v_, &k_scale_, &v_scale_})
    for (const Tensor& t : *ts) b += t.nbytes();
  return b;
}

void KVCache::copy_block(int32_t src, int32_t dst) {
  if (src < 0 || dst < 0 || src >= num_blocks() || dst >= num_blocks()) throw Error("kv cache: block id out of range");
  if (src == dst) return;
  for (int64_t l = 0; l < layers_; l++) {
    std::vector<Tensor*> per_block{&k_[size_t(l)], &v_[size_t(l)]};  // [num_blocks, ...]: one block is a row
    if (quant_ == KVCacheDType::Int8Dynamic) per_block.insert(per_block.end(), {&k_scale_[size_t(l)], &v_scale_[size_t(l)]});
    for (Tensor* t : per_block) {
      Tensor dst_block = t->slice0(dst, dst + 1);
      be_.copy(t->slice0(src, src + 1), dst_block);
    }
  }
}

KVStaticScales load_cachekv_scales(const std::string& path, const LlamaConfig& cfg) {
  const nlohmann::json j = parse_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object of scale lists");
  const int64_t L = cfg.num_hidden_layers, G = cfg.num_key_value_heads, H = cfg.num_attention_heads;
  KVStaticScales out;
  out.k_absmax.assign(size_t(L * G), -1.0f);
  out.v_absmax.assign(size_t(L * G), -1.0f);
  const std::regex key_re(R"((?:^|\.)layers\.(\d+)\.self_attn\.cache([kv])_matmul\.activation_quanter(\.zero_point)?$)");
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::smatch m;
    const std::string& key = it.key();
    if (key.size() > 256 || !std::regex_search(key, m, key_re)) continue;  // longer: none of ours (regex recurses)
    if (m[1].length() > 6) fail(path, "'" + key + "': layer index out of range");
    const int64_t layer = std::stoll(m[1].str());
    if (layer >= L) fail(path, "'" + key + "': the model has " + std::to_string(L) + " layers");
    const nlohmann::json& v = it.value();
    std::vector<double> vals;
    if (v.is_number()) vals.push_back(v.get<double>());
    else if (v.is_array())
      for (const auto& x : v) {
        if (!x.is_number()) fail(path, "'" + key + "' must be a list of numbers");
        vals.push_back(x.get<double>());
      }
    else fail(path, "'" + key + "' must be a list of numbers");
    if (m[3].matched) {
      for (double z : vals)
        if (z != 0) fail(path, "'" + key + "' is not zero: asymmetric int8 KV cache is not supported");
      continue;
    }
    if (int64_t(vals.size()) != G && int64_t(vals.size()) != H)
      fail(path, "'" + key + "' has " + std::to_string(vals.size()) + " values; expected one per kv head (" +
                     std::to_string(G) + ") or per attention head (" + std::to_string(H) + ")");
    const int64_t step = int64_t(vals.size()) == G ? 1 : H / G;
    auto& dst = m[2].str() == "k" ? out.k_absmax : out.v_absmax;
    for (int64_t g = 0; g < G; g++) {
      double a = vals[size_t(g * step)];
      if (!std::isfinite(a) || a <= 0) fail(path, "'" + key + "': scales must be positive finite numbers");
      dst[size_t(layer * G + g)] = float(a);
    }
  }
  for (int64_t l = 0; l < L; l++)
    if (out.k_absmax[size_t(l * G)] < 0 || out.v_absmax[size_t(l * G)] < 0)
      fail(path, "no cachek/cachev scales for layer " + std::to_string(l) +
                     " (keys like 'llama.layers." + std::to_string(l) + ".self_attn.cachek_matmul.activation_quanter')");
  return out;
}

BlockAllocator::BlockAllocator(int64_t num_blocks) : refs_(size_t(num_blocks), 0) {
  // Low ids first: pop from the back of a descending list.
  for (int64_t b = num_blocks; b-- > 0;) free_.push_back(int32_t(b));
}

int32_t BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void BlockAllocator::retain(int32_t b) {
  if (b < 0 || size_t(b) >= refs_.size() || refs_[size_t(b)] <= 0) throw Error("block allocator: retain of a free block");
  refs_[size_t(b)]++;
}

void BlockAllocator::release(int32_t b) {
  if (b < 0 || size_t(b) >= refs_.size() || refs_[size_t(b)] <= 0) throw Error("block allocator: double free");
  if (--refs_[size_t(b)] == 0) free_.push_back(b);
}

bool BlockTable::reserve(int64_t tokens, int64_t block_size, BlockAllocator& alloc) {
  int64_t need = (tokens + block_size - 1) / block_size;
  while (int64_t(blocks.size()) < need) {
    int32_t b = alloc.allocate();
    if (b < 0) return false;
    blocks.push_back(b);
  }
  return true;
}

void BlockTable::release_all(BlockAllocator& alloc) {
  for (int32_t b : blocks) alloc.release(b);
  blocks.clear();
}

}  // namespace oar
