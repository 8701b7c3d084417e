// The sampler at the edges of its parameters: temperatures so small that 1/T overflows must sample the top token.
#include <gtest/gtest.h>

#include <vector>

#include "infer/sampler.h"

namespace oar {
namespace {

std::vector<int32_t> draws(double temperature, const std::vector<float>& logits, double top_p = 0.7, int64_t top_k = 0) {
  std::vector<int32_t> out;
  for (uint64_t seed = 0; seed < 20; seed++) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_p = top_p;
    p.top_k = top_k;
    p.seed = seed;
    p.validate();
    Sampler s(p, 0);
    std::vector<float> row = logits;
    out.push_back(s.next(row.data(), int64_t(row.size()), {}));
  }
  return out;
}

TEST(Sampler, TinyTemperaturesAreGreedy) {
  // All-positive logits: the old 1/T = inf turned every logit into inf and the softmax into NaN.
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f};
  for (double t : {1e-40, 1e-300, 1e-6, 1e-3}) {
    for (double top_p : {0.7, 1.0}) {
      for (int32_t id : draws(t, logits, top_p)) EXPECT_EQ(id, 1) << "temperature " << t << " top_p " << top_p;
    }
    for (int32_t id : draws(t, logits, 1.0, 2)) EXPECT_EQ(id, 1) << "temperature " << t << " top_k 2";
  }
  // Mixed signs and a zero logit (0 * inf = NaN before).
  for (int32_t id : draws(1e-40, {-2.0f, 0.0f, 4.0f, -1.0f})) EXPECT_EQ(id, 2);
}

TEST(Sampler, SmallButOrdinaryTemperatureStillSamples) {
  // Two equal top logits at T = 0.01: both are drawn over 20 seeds, nothing else is.
  std::vector<int32_t> got = draws(0.01, {5.0f, 1.0f, 5.0f, -3.0f}, 1.0);
  int first = 0, third = 0;
  for (int32_t id : got) {
    ASSERT_TRUE(id == 0 || id == 2) << id;
    (id == 0 ? first : third)++;
  }
  EXPECT_GT(first, 0);
  EXPECT_GT(third, 0);
}

TEST(Sampler, HugeTemperatureIsUniformNotNaN) {
  for (int32_t id : draws(1e300, {100.0f, -100.0f, 0.0f}, 1.0)) EXPECT_TRUE(id >= 0 && id < 3) << id;
}

}  // namespace
}  // namespace oar
