#include "data/numpy_random.h"

namespace oar {

namespace {
constexpr int kN = 624;
constexpr int kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu;
constexpr uint32_t kUpper = 0x80000000u;
constexpr uint32_t kLower = 0x7fffffffu;
}  // namespace

NumpyRandomState::NumpyRandomState(uint32_t seed) {
  // Knuth's linear recurrence, as in the MT19937 reference init_genrand.
  key_[0] = seed;
  for (int i = 1; i < kN; i++) key_[i] = 1812433253u * (key_[i - 1] ^ (key_[i - 1] >> 30)) + uint32_t(i);
  pos_ = kN;
}

void NumpyRandomState::refill() {
  int i = 0;
  for (; i < kN - kM; i++) {
    uint32_t y = (key_[i] & kUpper) | (key_[i + 1] & kLower);
    key_[i] = key_[i + kM] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  }
  for (; i < kN - 1; i++) {
    uint32_t y = (key_[i] & kUpper) | (key_[i + 1] & kLower);
    key_[i] = key_[i + (kM - kN)] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  }
  uint32_t y = (key_[kN - 1] & kUpper) | (key_[0] & kLower);
  key_[kN - 1] = key_[kM - 1] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  pos_ = 0;
}

uint32_t NumpyRandomState::next_uint32() {
  if (pos_ >= kN) refill();
  uint32_t y = key_[pos_++];
  // Tempering.
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

uint64_t NumpyRandomState::next_uint64() {
  uint64_t hi = next_uint32();
  uint64_t lo = next_uint32();
  return (hi << 32) | lo;
}

uint64_t NumpyRandomState::interval(uint64_t max) {
  if (max == 0) return 0;
  // The smallest all-ones mask covering max; draws above max are rejected (no modulo bias).
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t v;
  if (max <= 0xffffffffu) {
    while ((v = (next_uint32() & mask)) > max) {
    }
  } else {
    while ((v = (next_uint64() & mask)) > max) {
    }
  }
  return v;
}

}  // namespace oar
