#include "data/gpt_dataset.h"

#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "data/numpy_random.h"

namespace oar {

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// Python's float(): surrounding whitespace allowed, nothing else.
double parse_float(const std::string& text, const std::string& split) {
  const std::string t = trim(text);
  char* end = nullptr;
  errno = 0;
  double v = t.empty() ? 0 : std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || errno == ERANGE || !std::isfinite(v))
    fail("split", "'" + split + "' is not a list of numbers like 949,50,1");
  return v;
}

std::array<double, 3> parse_split(const std::string& split) {
  std::vector<std::string> parts;
  const char sep = split.find(',') != std::string::npos ? ',' : split.find('/') != std::string::npos ? '/' : '\0';
  if (sep) {
    std::string cur;
    for (char c : split) {
      if (c == sep) {
        parts.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    parts.push_back(cur);
  } else {
    parts.push_back(split);
  }
  std::array<double, 3> w{0, 0, 0};
  // Like PaddleNLP, entries past the third are parsed and then ignored.
  for (size_t i = 0; i < parts.size(); i++) {
    double v = parse_float(parts[i], split);
    if (v < 0) fail("split", "'" + split + "' has a negative entry");
    if (i < 3) w[i] = v;
  }
  if (!(w[0] + w[1] + w[2] > 0)) fail("split", "'" + split + "' sums to 0");
  return w;
}

}  // namespace

std::array<int64_t, 4> gpt_split_bounds(const std::string& split, int64_t num_sequences) {
  const std::array<double, 3> w = parse_split(split);
  const double sum = w[0] + w[1] + w[2];
  std::array<int64_t, 4> b{0, 0, 0, 0};
  for (int i = 0; i < 3; i++) {
    // Python's round() rounds half to even, as nearbyint does in the default rounding mode.
    b[size_t(i) + 1] = b[size_t(i)] + int64_t(std::nearbyint((w[size_t(i)] / sum) * double(num_sequences)));
  }
  const int64_t diff = b[3] - num_sequences;
  for (int i = 1; i < 4; i++) b[size_t(i)] -= diff;
  return b;
}

void gpt_check_data_split(const std::string& split, bool do_train, bool do_eval, bool do_predict) {
  const std::array<double, 3> w = parse_split(split);
  if ((do_train && w[0] == 0) || (do_eval && w[1] == 0) || (do_predict && w[2] == 0))
    fail("split", "'" + split + "': do_train/do_eval/do_predict need a non-zero train/valid/test share");
}

std::array<int64_t, 3> pretrain_num_samples(int64_t bs, int64_t eval_bs, int64_t world, int64_t max_steps,
                                            int64_t grad_acc, int64_t eval_steps, int64_t eval_iters,
                                            int64_t test_iters) {
  if (eval_steps <= 0) fail("eval_steps", "must be positive");
  return {bs * world * max_steps * grad_acc, eval_bs * world * eval_iters * (max_steps / eval_steps + 1),
          eval_bs * world * test_iters};
}

GptIndices build_gpt_indices(const std::vector<int32_t>& sizes, int64_t begin, int64_t end, int64_t num_samples,
                             int64_t seq_length, uint32_t seed) {
  if (begin < 0 || end > int64_t(sizes.size()) || begin >= end) fail("", "GPT dataset: empty sequence range");
  if (end > int64_t(INT32_MAX)) fail("", "GPT dataset: more than 2^31 sequences");
  if (seq_length <= 0) fail("max_seq_length", "must be positive");
  if (num_samples < 0) fail("", "GPT dataset: negative number of samples");
  GptIndices ix;
  const int64_t ndocs = end - begin;
  for (int64_t d = begin; d < end; d++) ix.tokens_per_epoch += sizes[size_t(d)];
  const int64_t T = ix.tokens_per_epoch;
  if (T <= 0) fail("", "GPT dataset: the split holds no tokens");
  // Epochs: the fewest whose tokens give num_samples samples of seq_length (+1 shared) tokens.
  ix.num_epochs = 0;
  int64_t total = 0;
  do {
    ix.num_epochs++;
    total += T;
  } while ((total - 1) / seq_length < num_samples);
  const int64_t E = ix.num_epochs;
  if (E > int64_t(INT32_MAX) / ndocs)
    fail("", "GPT dataset: " + std::to_string(num_samples) + " samples need " + std::to_string(E) +
                 " epochs of " + std::to_string(ndocs) + " sequences, too many");

  // Whether the last epoch is shuffled on its own: it is when it contributes < 80% of an epoch's samples.
  int64_t samples_before_last = 0;
  if (E > 1) {
    samples_before_last = ((E - 1) * T - 1) / seq_length;
    const int64_t last_epoch_samples = num_samples - samples_before_last;
    const int64_t per_epoch = (T - 1) / seq_length;
    ix.separate_last_epoch = last_epoch_samples < int64_t(0.80 * double(per_epoch));
  }

  NumpyRandomState rng(seed);
  // doc_idx: the split's sequence ids tiled over the epochs, shuffled (the last epoch apart when separate).
  ix.doc_idx.resize(size_t(E * ndocs));
  for (int64_t e = 0; e < E; e++)
    for (int64_t d = 0; d < ndocs; d++) ix.doc_idx[size_t(e * ndocs + d)] = int32_t(begin + d);
  if (ix.separate_last_epoch) {
    rng.shuffle(ix.doc_idx.data(), size_t((E - 1) * ndocs));
    rng.shuffle(ix.doc_idx.data() + (E - 1) * ndocs, size_t(ndocs));
  } else {
    rng.shuffle(ix.doc_idx);
  }

  // sample_idx: where each sample starts; each spans seq_length + 1 tokens, the last shared with the next.
  const int64_t n = (E * T - 1) / seq_length;
  ix.sample_idx.assign(size_t(2 * (n + 1)), 0);
  int64_t di = 0, offset = 0;
  for (int64_t s = 1; s <= n; s++) {
    int64_t remaining = seq_length + 1;
    while (remaining != 0) {
      const int64_t doc_len = sizes[size_t(ix.doc_idx[size_t(di)])] - offset;
      remaining -= doc_len;
      if (remaining <= 0) {
        offset += remaining + doc_len - 1;  // stop inside this document, on the token the next sample repeats
        remaining = 0;
      } else {
        di++;
        offset = 0;
      }
    }
    ix.sample_idx[size_t(2 * s)] = di;
    ix.sample_idx[size_t(2 * s + 1)] = offset;
  }

  // shuffle_idx: [0, n) shuffled; with a separate last epoch, its samples are shuffled among themselves.
  const int64_t first = ix.separate_last_epoch ? samples_before_last : n;
  ix.shuffle_idx.resize(size_t(n));
  std::iota(ix.shuffle_idx.begin(), ix.shuffle_idx.end(), int64_t(0));
  rng.shuffle(ix.shuffle_idx.data(), size_t(first));
  if (first < n) rng.shuffle(ix.shuffle_idx.data() + first, size_t(n - first));
  return ix;
}

GptDataset::GptDataset(std::shared_ptr<const IndexedDataset> data, std::string name, int64_t begin, int64_t end,
                       int64_t num_samples, int64_t seq_length, uint32_t seed, const IndexSharing& share)
    : data_(std::move(data)), name_(std::move(name)), seq_length_(seq_length) {
  auto build = [&] {
    std::vector<int32_t> sizes(size_t(data_->num_sequences()));
    for (size_t i = 0; i < sizes.size(); i++) sizes[i] = data_->index().size(i);
    try {
      return build_gpt_indices(sizes, begin, end, num_samples, seq_length, seed);
    } catch (const Error& e) {
      fail(data_->prefix() + ".idx", std::string(e.what()) + " (" + name_ + " split)");
    }
  };
  indices_ = share ? share(build) : build();
}

void GptDataset::sample(int64_t i, std::vector<int32_t>& out) const {
  if (i < 0 || i >= size())
    fail(data_->prefix() + ".idx", name_ + " sample " + std::to_string(i) + " out of range (" +
                                       std::to_string(size()) + " samples)");
  const int64_t j = indices_.shuffle_idx[size_t(i)];
  const int64_t f = indices_.sample_idx[size_t(2 * j)], off_f = indices_.sample_idx[size_t(2 * j + 1)];
  const int64_t l = indices_.sample_idx[size_t(2 * j + 2)], off_l = indices_.sample_idx[size_t(2 * j + 3)];
  const auto& doc = indices_.doc_idx;
  out.clear();
  out.reserve(size_t(seq_length_ + 1));
  if (f == l) {
    data_->read(doc[size_t(f)], off_f, off_l - off_f + 1, out);
  } else {
    data_->read(doc[size_t(f)], off_f, -1, out);                             // the rest of the first document
    for (int64_t k = f + 1; k < l; k++) data_->read(doc[size_t(k)], 0, -1, out);  // whole documents between
    data_->read(doc[size_t(l)], 0, off_l + 1, out);                          // the head of the last
  }
  if (int64_t(out.size()) != seq_length_ + 1)
    fail(data_->prefix() + ".idx", "internal error: sample has " + std::to_string(out.size()) + " tokens");
}

void build_blending_indices(const std::vector<double>& weights, int64_t size, std::vector<uint8_t>& dataset_index,
                            std::vector<int64_t>& dataset_sample_index) {
  const size_t k = weights.size();
  if (k == 0 || k >= 255) fail("", "blending needs 1 to 254 datasets");
  double sum = 0;
  for (double w : weights) {
    if (!(w >= 0)) fail("", "blending weights must be non-negative");
    sum += w;
  }
  if (!(sum > 0)) fail("", "blending weights sum to 0");
  std::vector<double> norm(weights);
  for (double& w : norm) w /= sum;
  std::vector<int64_t> taken(k, 0);
  dataset_index.resize(size_t(size));
  dataset_sample_index.resize(size_t(size));
  for (int64_t s = 0; s < size; s++) {
    const double at = std::max(double(s), 1.0);
    size_t best = 0;
    double best_err = norm[0] * at - double(taken[0]);
    for (size_t d = 1; d < k; d++) {
      const double err = norm[d] * at - double(taken[d]);
      if (err > best_err) {
        best_err = err;
        best = d;
      }
    }
    dataset_index[size_t(s)] = uint8_t(best);
    dataset_sample_index[size_t(s)] = taken[best]++;
  }
}

BlendedDataset::BlendedDataset(std::vector<std::shared_ptr<PretrainSamples>> datasets, std::vector<double> weights,
                               int64_t size)
    : datasets_(std::move(datasets)), size_(size) {
  if (datasets_.empty() || datasets_.size() != weights.size()) fail("", "blending: one weight per dataset");
  build_blending_indices(weights, size, dataset_index_, dataset_sample_index_);
  for (int64_t s = 0; s < size; s++) {  // PaddleNLP checks the same: every index must exist
    const auto& d = datasets_[dataset_index_[size_t(s)]];
    if (dataset_sample_index_[size_t(s)] >= d->size())
      fail("", "blending: dataset " + std::to_string(dataset_index_[size_t(s)]) + " has only " +
                   std::to_string(d->size()) + " samples");
  }
}

void BlendedDataset::sample(int64_t i, std::vector<int32_t>& out) const {
  if (i < 0 || i >= size_) fail("", "blended sample " + std::to_string(i) + " out of range");
  datasets_[dataset_index_[size_t(i)]]->sample(dataset_sample_index_[size_t(i)], out);
}

std::vector<std::pair<double, std::string>> find_pretrain_inputs(const std::string& input_dir) {
  std::vector<std::string> words;
  {
    std::istringstream in(input_dir);
    std::string w;
    while (in >> w) words.push_back(w);
  }
  std::vector<std::pair<double, std::string>> out;
  if (words.size() > 1) {  // "w1 prefix1 w2 prefix2 ..."
    if (words.size() % 2 != 0) fail("input_dir", "'" + input_dir + "' should be 'weight prefix weight prefix ...'");
    for (size_t i = 0; i < words.size(); i += 2) {
      char* end = nullptr;
      double w = std::strtod(words[i].c_str(), &end);
      if (end != words[i].c_str() + words[i].size() || !(w >= 0))
        fail("input_dir", "'" + words[i] + "' is not a weight");
      out.emplace_back(w, words[i + 1]);
    }
    return out;
  }
  if (input_dir.empty()) fail("input_dir", "not set");
  if (file_exists(input_dir + ".idx")) return {{1.0, input_dir}};
  DIR* dir = ::opendir(input_dir.c_str());
  if (!dir) fail(input_dir, "no such directory (input_dir should hold PREFIX.bin/PREFIX.idx files)");
  std::vector<std::string> prefixes;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    const std::string full = join_path(input_dir, name);
    if (!file_exists(full)) continue;
    // run_pretrain.py takes every name containing ".idx"; only names ending in it are taken here, so that
    // temporary files (NAME.idx.tmp.*) of an interrupted writer are not mistaken for datasets.
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".idx") == 0) {
      prefixes.push_back(join_path(input_dir, name.substr(0, name.size() - 4)));
    } else if (name.find("_idx.npz") != std::string::npos) {
      ::closedir(dir);
      fail(full, "the legacy _ids.npy/_idx.npz format is not supported; convert it to .bin/.idx");
    }
  }
  ::closedir(dir);
  std::sort(prefixes.begin(), prefixes.end());
  if (prefixes.empty()) fail(input_dir, "no .idx files found");
  for (auto& p : prefixes) out.emplace_back(1.0, p);
  return out;
}

PretrainDatasets build_pretrain_datasets(const std::vector<std::pair<double, std::string>>& inputs,
                                         const std::string& split, const std::array<int64_t, 3>& num_samples,
                                         int64_t seq_length, uint32_t seed, const IndexSharing& share) {
  if (inputs.empty()) fail("input_dir", "no datasets");
  const char* names[3] = {"train", "valid", "test"};
  auto build_one = [&](const std::string& prefix, const std::array<int64_t, 3>& n) {
    auto data = IndexedDataset::open(prefix);
    const auto b = gpt_split_bounds(split, data->num_sequences());
    std::array<std::shared_ptr<PretrainSamples>, 3> out;
    for (size_t s = 0; s < 3; s++)
      if (b[s + 1] > b[s])
        out[s] = std::make_shared<GptDataset>(data, names[s], b[s], b[s + 1], n[s], seq_length, seed, share);
    return out;
  };
  PretrainDatasets result;
  if (inputs.size() == 1) {
    auto d = build_one(inputs[0].second, num_samples);
    result.train = d[0];
    result.valid = d[1];
    result.test = d[2];
    return result;
  }
  double sum = 0;
  for (auto& [w, p] : inputs) sum += w;
  if (!(sum > 0)) fail("input_dir", "dataset weights sum to 0");
  std::array<std::vector<std::shared_ptr<PretrainSamples>>, 3> parts;
  std::array<std::vector<double>, 3> weights;
  for (auto& [w, p] : inputs) {
    const double wn = w / sum;
    std::array<int64_t, 3> n{};
    for (size_t s = 0; s < 3; s++) n[s] = int64_t(std::ceil(double(num_samples[s]) * wn * 1.005)) + 20;
    auto d = build_one(p, n);
    for (size_t s = 0; s < 3; s++)
      if (d[s]) {
        parts[s].push_back(d[s]);
        weights[s].push_back(wn);
      }
  }
  std::array<std::shared_ptr<PretrainSamples>, 3> blended;
  for (size_t s = 0; s < 3; s++)
    if (!parts[s].empty()) blended[s] = std::make_shared<BlendedDataset>(parts[s], weights[s], num_samples[s]);
  result.train = blended[0];
  result.valid = blended[1];
  result.test = blended[2];
  return result;
}

}  // namespace oar
