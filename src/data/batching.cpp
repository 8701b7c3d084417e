#include "data/batching.h"

#include <algorithm>

#include "core/error.h"

namespace oar {

namespace {

void append(PackedRow& row, const SftExample& ex, int64_t index) {
  if (ex.labels.size() != ex.input_ids.size()) fail("", "example has input_ids and labels of different lengths");
  const int32_t seg = int32_t(row.examples.size());  // examples are numbered 0, 1, ... within the row
  row.input_ids.insert(row.input_ids.end(), ex.input_ids.begin(), ex.input_ids.end());
  row.labels.insert(row.labels.end(), ex.labels.begin(), ex.labels.end());
  for (int64_t t = 0; t < ex.size(); t++) {
    row.position_ids.push_back(int32_t(t));
    row.segment_ids.push_back(seg);
  }
  row.examples.push_back(index);
}

}  // namespace

PackedRow single_row(const SftExample& ex, int64_t index) {
  PackedRow r;
  append(r, ex, index);
  return r;
}

std::vector<PackedRow> pack_in_order(const std::vector<SftExample>& examples, int64_t max_length) {
  if (max_length <= 0) fail("max_length", "must be positive");
  std::vector<PackedRow> rows;
  PackedRow cur;
  for (size_t i = 0; i < examples.size(); i++) {
    const int64_t n = examples[i].size();
    if (n > max_length) continue;
    if (cur.size() + n > max_length) {
      rows.push_back(std::move(cur));
      cur = PackedRow();
    }
    append(cur, examples[i], int64_t(i));
  }
  if (!cur.examples.empty()) rows.push_back(std::move(cur));
  return rows;
}

namespace {

// One buffer of the greedy strategy; `idx` are example indices.
void greedy_buffer(const std::vector<SftExample>& examples, const std::vector<int64_t>& idx, int64_t max_length,
                   std::vector<PackedRow>& out) {
  std::vector<int64_t> room{max_length};  // room left in each open pack, in opening order
  std::vector<std::vector<int64_t>> packs(1);
  for (size_t k = 0; k < idx.size();) {
    const int64_t n = examples[size_t(idx[k])].size();
    const size_t best = size_t(std::max_element(room.begin(), room.end()) - room.begin());  // first maximum
    if (n <= room[best]) {
      packs[best].push_back(idx[k]);
      room[best] -= n;
      k++;
    } else {
      room.push_back(max_length);
      packs.emplace_back();
    }
  }
  for (const auto& p : packs) {
    if (p.empty()) continue;
    PackedRow row;
    for (int64_t i : p) append(row, examples[size_t(i)], i);
    out.push_back(std::move(row));
  }
}

}  // namespace

std::vector<PackedRow> pack_greedy(const std::vector<SftExample>& examples, int64_t max_length, int64_t buffer_size) {
  if (max_length <= 0) fail("max_length", "must be positive");
  if (buffer_size <= 0) fail("", "greedy packing buffer must be positive");
  std::vector<PackedRow> rows;
  std::vector<int64_t> buf;
  for (size_t i = 0; i < examples.size(); i++) {
    if (examples[i].size() > max_length) continue;
    if (int64_t(buf.size()) == buffer_size) {
      greedy_buffer(examples, buf, max_length, rows);
      buf.clear();
    }
    buf.push_back(int64_t(i));
  }
  if (!buf.empty()) greedy_buffer(examples, buf, max_length, rows);
  return rows;
}

std::vector<PackedRow> sft_rows(const std::vector<SftExample>& examples, int64_t max_length, bool zero_padding,
                                bool greedy_zero_padding) {
  if (zero_padding) return greedy_zero_padding ? pack_greedy(examples, max_length) : pack_in_order(examples, max_length);
  std::vector<PackedRow> rows;
  rows.reserve(examples.size());
  for (size_t i = 0; i < examples.size(); i++) rows.push_back(single_row(examples[i], int64_t(i)));
  return rows;
}

TrainBatch make_batch(const std::vector<const PackedRow*>& rows, const PadOptions& pad) {
  if (rows.empty()) fail("", "empty batch");
  int64_t L = std::max<int64_t>(pad.pad_to, 1);
  for (const PackedRow* r : rows) L = std::max(L, r->size());
  if (pad.pad_to_multiple_of > 0) L = (L + pad.pad_to_multiple_of - 1) / pad.pad_to_multiple_of * pad.pad_to_multiple_of;
  TrainBatch b;
  b.B = int64_t(rows.size());
  b.L = L;
  const size_t n = size_t(b.B * L);
  b.input_ids.assign(n, pad.pad_id);
  b.labels.assign(n, -100);
  b.position_ids.assign(n, 0);
  b.segment_ids.assign(n, -1);
  for (size_t r = 0; r < rows.size(); r++) {
    const PackedRow& row = *rows[r];
    if (row.labels.size() != row.input_ids.size() || row.position_ids.size() != row.input_ids.size() ||
        row.segment_ids.size() != row.input_ids.size())
      fail("", "batch row with fields of different lengths");
    const size_t at = r * size_t(L);
    std::copy(row.input_ids.begin(), row.input_ids.end(), b.input_ids.begin() + long(at));
    std::copy(row.labels.begin(), row.labels.end(), b.labels.begin() + long(at));
    std::copy(row.position_ids.begin(), row.position_ids.end(), b.position_ids.begin() + long(at));
    std::copy(row.segment_ids.begin(), row.segment_ids.end(), b.segment_ids.begin() + long(at));
  }
  return b;
}

TrainBatch make_batch(const std::vector<PackedRow>& rows, const PadOptions& pad) {
  std::vector<const PackedRow*> p;
  for (const auto& r : rows) p.push_back(&r);
  return make_batch(p, pad);
}

TrainBatch make_pretrain_batch(const std::vector<std::vector<int32_t>>& texts) {
  if (texts.empty()) fail("", "empty batch");
  const size_t len = texts.front().size();
  if (len < 2) fail("", "pretraining samples need at least 2 tokens");
  TrainBatch b;
  b.B = int64_t(texts.size());
  b.L = int64_t(len) - 1;
  for (const auto& t : texts) {
    if (t.size() != len) fail("", "pretraining samples of different lengths in one batch");
    b.input_ids.insert(b.input_ids.end(), t.begin(), t.end() - 1);
    b.labels.insert(b.labels.end(), t.begin() + 1, t.end());
    for (int64_t p = 0; p < b.L; p++) b.position_ids.push_back(int32_t(p));
    b.segment_ids.insert(b.segment_ids.end(), size_t(b.L), 0);
  }
  return b;
}

}  // namespace oar
