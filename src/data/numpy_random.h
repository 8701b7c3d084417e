// NumPy's legacy RandomState (MT19937) reproduced bit for bit, for the parts PaddleNLP's data pipeline uses:
// RandomState(seed) with an integer seed and shuffle() of a 1-D array. GPTDataset's doc/shuffle orders depend on
// it, so the same seed gives the same sample order as PaddleNLP.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace oar {

class NumpyRandomState {
 public:
  // np.random.RandomState(seed) for an integer seed in [0, 2^32): MT19937 init_genrand (not init_by_array).
  explicit NumpyRandomState(uint32_t seed);

  uint32_t next_uint32();  // genrand_int32
  uint64_t next_uint64();  // two draws, the first in the high half (NumPy's mt19937_next64)
  // A uniform integer in [0, max] by masked rejection, as NumPy's random_interval (the legacy rk_interval).
  uint64_t interval(uint64_t max);

  // RandomState.shuffle on a 1-D array: Fisher-Yates from the end, j = interval(i) for i = n-1 .. 1.
  template <class T>
  void shuffle(T* data, size_t n) {
    for (size_t i = n; i-- > 1;) {
      size_t j = size_t(interval(i));
      std::swap(data[i], data[j]);
    }
  }
  template <class T>
  void shuffle(std::vector<T>& v) { shuffle(v.data(), v.size()); }

 private:
  void refill();
  uint32_t key_[624];
  int pos_ = 624;
};

}  // namespace oar
