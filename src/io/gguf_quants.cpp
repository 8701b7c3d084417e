// ggml's block formats, dequantized as its reference code does (and gguf-py's numpy, which the tests compare
// against): scale products first, in float32, then times the quant.
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"

namespace oar {
namespace {

uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float f16_at(const uint8_t* p) { return f16_to_f32(u16_at(p)); }

// Q8_0, 34 bytes per 32 values: f16 d, int8 q[32]; y = d * q.
void q8_0_block(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 32; j++) y[j] = float(int8_t(b[2 + j])) * d;
}

// Q4_0, 18 bytes per 32 values: f16 d, 16 bytes whose low nibbles are values 0-15 and high nibbles 16-31,
// each q - 8; y = d * (q - 8).
void q4_0_block(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 16; j++) {
    y[j] = d * float(int(b[2 + j] & 0x0F) - 8);
    y[j + 16] = d * float(int(b[2 + j] >> 4) - 8);
  }
}

// Q4_1, 20 bytes per 32 values: f16 d, f16 m, then nibbles as Q4_0's; y = d * q + m.
void q4_1_block(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  for (int j = 0; j < 16; j++) {
    y[j] = d * float(b[4 + j] & 0x0F) + m;
    y[j + 16] = d * float(b[4 + j] >> 4) + m;
  }
}

// Q5_0 (llama.cpp's fallback in Q4_K_M files for widths that are no multiple of 256) and Q5_1: f16 d (Q5_1: and f16 m),
// a little-endian uint32 whose bit j is value j's fifth bit, then nibbles as Q4_0's. Q5_0: y = d * (q - 16), 22
// bytes per 32 values; Q5_1: y = d * q + m, 24 bytes.
template <bool WithMin>
void q5_block(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = WithMin ? f16_at(b + 2) : 0.0f;
  const uint8_t* p = b + (WithMin ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  for (int j = 0; j < 16; j++) {
    const int lo = (qs[j] & 0x0F) | int(((qh >> j) & 1) << 4), hi = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
    if constexpr (WithMin) {
      y[j] = d * float(lo) + m;
      y[j + 16] = d * float(hi) + m;
    } else {
      y[j] = d * float(lo - 16);
      y[j + 16] = d * float(hi - 16);
    }
  }
}

// Q4_K, 144 bytes per 256 values: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and mins, 128 bytes of nibbles.
// Sub-block j (32 values) is y = d * sc[j] * q - dmin * m[j]; bytes 32c..32c+31 hold sub-block 2c in their low
// nibbles and 2c+1 in their high ones.
void q4_k_block(const uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0; j < 8; j++) {
    const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    const int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    const float dl = d * float(sc), ml = dmin * float(m);
    const uint8_t* qc = q + 32 * (j / 2);
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; l++) y[32 * j + l] = dl * float((qc[l] >> shift) & 0x0F) - ml;
  }
}

// Q6_K, 210 bytes per 256 values: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], f16 d. In each
// half of 128 values, value p has its low bits in ql[p % 64] (low nibble for p < 64, high for the rest), its high
// bits in qh[p % 32] at bit 2 * (p / 32), and the scale of its 16; y = d * scale * (q - 32).
void q6_k_block(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int half = 0; half < 2; half++) {
    for (int p = 0; p < 128; p++) {
      const int lo = (ql[p % 64] >> (p < 64 ? 0 : 4)) & 0x0F;
      const int hi = (qh[p % 32] >> (2 * (p / 32))) & 3;
      y[p] = d * float(sc[p / 16]) * float((lo | (hi << 4)) - 32);
    }
    ql += 64;
    qh += 32;
    sc += 8;
    y += 128;
  }
}

// Blocks are independent: large tensors (a 13B model's embedding dequantizes 164M values) use every core.
void each_block(const uint8_t* src, int64_t n, float* dst, int64_t block, int64_t bytes,
                void (*one)(const uint8_t*, float*)) {
  const int64_t nb = n / block;
#pragma omp parallel for schedule(static) if (nb > 4096)
  for (int64_t b = 0; b < nb; b++) one(src + bytes * b, dst + block * b);
}

}  // namespace

void gguf_dequantize(GgufType type, const uint8_t* src, int64_t n, float* dst) {
  void (*one)(const uint8_t*, float*) = nullptr;  // a quantized type's block; its sizes come from gguf_type_layout
  switch (type) {
    case GgufType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GgufType::F16:
      for (int64_t j = 0; j < n; j++) dst[j] = f16_at(src + 2 * j);
      return;
    case GgufType::BF16:
      for (int64_t j = 0; j < n; j++) dst[j] = bf16_to_f32(u16_at(src + 2 * j));
      return;
    case GgufType::Q8_0: one = q8_0_block; break;
    case GgufType::Q4_0: one = q4_0_block; break;
    case GgufType::Q4_1: one = q4_1_block; break;
    case GgufType::Q5_0: one = q5_block<false>; break;
    case GgufType::Q5_1: one = q5_block<true>; break;
    case GgufType::Q4_K: one = q4_k_block; break;
    case GgufType::Q6_K: one = q6_k_block; break;
    default: break;
  }
  GgufTypeLayout layout;
  if (one && gguf_type_layout(uint32_t(type), layout)) return each_block(src, n, dst, layout.block, layout.bytes, one);
  throw Error("gguf_dequantize: type " + gguf_type_name(uint32_t(type)) + " has no dequantization");
}

}  // namespace oar
