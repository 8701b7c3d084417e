// PaddleNLP's GPTDataset (paddlenlp/data/causal_dataset.py) for pretraining: samples of seq_length + 1 tokens
// cut across document boundaries from an indexed dataset, in the same order as PaddleNLP for the same seed.
//
// How the order is made (notes/paddlenlp.md §3.4): the split string ("949,50,1") divides the *sequences* of the
// .idx into train/valid/test ranges; each range is repeated for as many epochs as num_samples needs; doc_idx is
// that list shuffled by NumPy's RandomState(seed) (the last epoch shuffled on its own when it is needed for less
// than 80% of its samples); sample_idx walks doc_idx in steps of seq_length tokens (consecutive samples share
// one token, so input = text[:-1] and labels = text[1:] cover every token once); shuffle_idx permutes the sample
// numbers with the same generator.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/indexed_dataset.h"

namespace oar {

// Parses "949,50,1" (or "949/50/1", or one number), pads to three entries, normalises, and returns the four bounds
// [0, train_end, valid_end, N] over `num_sequences` as PaddleNLP does (Python round(), half to even, then the
// rounding error moved onto every bound so the last is N). Throws oar::Error naming `split` when it is malformed.
std::array<int64_t, 4> gpt_split_bounds(const std::string& split, int64_t num_sequences);
// PaddleNLP's check_data_split: an error when do_train / do_eval / do_predict needs a split that is 0.
void gpt_check_data_split(const std::string& split, bool do_train, bool do_eval, bool do_predict);

// run_pretrain.py's sample counts: train = bs x world x max_steps x grad_acc; valid = eval_bs x world x eval_iters
// x (max_steps / eval_steps + 1); test = eval_bs x world x test_iters (eval_iters 10, test_iters 100 there).
std::array<int64_t, 3> pretrain_num_samples(int64_t per_device_train_batch_size, int64_t per_device_eval_batch_size,
                                            int64_t dataset_world_size, int64_t max_steps,
                                            int64_t gradient_accumulation_steps, int64_t eval_steps,
                                            int64_t eval_iters = 10, int64_t test_iters = 100);

// The three index arrays of one GPTDataset, as PaddleNLP would cache them in index-cache/*.npy.
struct GptIndices {
  std::vector<int32_t> doc_idx;       // sequence ids, num_epochs x (documents in the split), shuffled
  std::vector<int64_t> sample_idx;    // [num_samples_total + 1][2]: (index into doc_idx, token offset), row-major
  std::vector<int64_t> shuffle_idx;   // a permutation of [0, num_samples_total)
  int64_t num_epochs = 0;
  int64_t tokens_per_epoch = 0;
  bool separate_last_epoch = false;
  int64_t num_samples() const { return int64_t(shuffle_idx.size()); }  // >= the number asked for
};

// Builds the indices for sequences [begin, end) of `sizes` (tokens per sequence of the whole .idx).
// num_samples: samples wanted; seq_length: tokens per sample minus one; seed: the RandomState seed.
GptIndices build_gpt_indices(const std::vector<int32_t>& sizes, int64_t begin, int64_t end, int64_t num_samples,
                             int64_t seq_length, uint32_t seed);

// How a dataset gets its indices: given the local builder, returns them. Empty: build here. A multi-process run
// builds them once (rank 0) and sends them to the other ranks, as PaddleNLP shares its index cache.
using IndexSharing = std::function<GptIndices(const std::function<GptIndices()>& build)>;

// Any source of pretraining samples: a GPT dataset or a blend of several.
class PretrainSamples {
 public:
  virtual ~PretrainSamples() = default;
  virtual int64_t size() const = 0;        // number of samples, indices [0, size)
  virtual int64_t seq_length() const = 0;  // each sample has seq_length() + 1 tokens
  // Replaces `out` with sample i's tokens. Throws oar::Error on a bad index or a corrupt file.
  virtual void sample(int64_t i, std::vector<int32_t>& out) const = 0;
  std::vector<int32_t> sample(int64_t i) const {
    std::vector<int32_t> v;
    sample(i, v);
    return v;
  }
};

class GptDataset final : public PretrainSamples {
 public:
  // name: "train" / "valid" / "test" (for messages). Throws oar::Error when the range holds no tokens.
  GptDataset(std::shared_ptr<const IndexedDataset> data, std::string name, int64_t begin, int64_t end,
             int64_t num_samples, int64_t seq_length, uint32_t seed, const IndexSharing& share = {});
  int64_t size() const override { return indices_.num_samples(); }
  int64_t seq_length() const override { return seq_length_; }
  void sample(int64_t i, std::vector<int32_t>& out) const override;
  using PretrainSamples::sample;
  const GptIndices& indices() const { return indices_; }
  const std::string& name() const { return name_; }

 private:
  std::shared_ptr<const IndexedDataset> data_;
  std::string name_;
  int64_t seq_length_;
  GptIndices indices_;
};

// Megatron/PaddleNLP BlendableDataset: sample k comes from the dataset whose share so far lags its weight most
// (weights normalised; ties to the lower index). Exposed for tests.
void build_blending_indices(const std::vector<double>& weights, int64_t size, std::vector<uint8_t>& dataset_index,
                            std::vector<int64_t>& dataset_sample_index);

class BlendedDataset final : public PretrainSamples {
 public:
  BlendedDataset(std::vector<std::shared_ptr<PretrainSamples>> datasets, std::vector<double> weights, int64_t size);
  int64_t size() const override { return size_; }
  int64_t seq_length() const override { return datasets_.front()->seq_length(); }
  void sample(int64_t i, std::vector<int32_t>& out) const override;
  using PretrainSamples::sample;

 private:
  std::vector<std::shared_ptr<PretrainSamples>> datasets_;
  int64_t size_;
  std::vector<uint8_t> dataset_index_;
  std::vector<int64_t> dataset_sample_index_;
};

// run_pretrain.py's input_dir: a directory whose *.idx files each give a prefix (several -> a blend, weight 1
// each, in sorted order), or "w1 prefix1 w2 prefix2 ..." with explicit weights. A bare prefix (prefix.idx exists)
// is accepted too. Returns (weight, prefix) pairs. Throws oar::Error naming input_dir when nothing is found.
std::vector<std::pair<double, std::string>> find_pretrain_inputs(const std::string& input_dir);

struct PretrainDatasets {
  std::shared_ptr<PretrainSamples> train, valid, test;  // null where the split is empty
};
// build_train_valid_test_datasets: one dataset, or a blend where each dataset gets ceil(n x w x 1.005) + 20
// samples of its own and the blend n. The same seed for every split, as PaddleNLP.
PretrainDatasets build_pretrain_datasets(const std::vector<std::pair<double, std::string>>& inputs,
                                         const std::string& split, const std::array<int64_t, 3>& num_samples,
                                         int64_t seq_length, uint32_t seed, const IndexSharing& share = {});

}  // namespace oar
