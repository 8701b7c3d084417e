#include "data/sft_dataset.h"

#include <fstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/line_reader.h"

namespace oar {

namespace {

using nlohmann::json;

std::vector<std::string> string_list(const json& v, const char* key, const std::string& where) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array() || v.empty())
    fail(where, std::string("\"") + key + "\" must be a string or a non-empty list of strings");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) fail(where, std::string("\"") + key + "\" must be a string or a non-empty list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// Python's a[:k] for a list: a negative k counts from the end, both ends clamp.
std::vector<int32_t> py_head(const std::vector<int32_t>& a, int64_t k) {
  const int64_t n = int64_t(a.size());
  if (k < 0) k = std::max<int64_t>(0, n + k);
  k = std::min(k, n);
  return std::vector<int32_t>(a.begin(), a.begin() + k);
}

void check(const SftRecord& rec, const SftOptions& opt) {
  if (opt.src_length <= 0) fail("src_length", "must be positive");
  if (opt.max_length <= 1) fail("max_length", "must be at least 2");
  if (rec.src.empty() || rec.src.size() != rec.tgt.size())
    fail(rec.where, "\"src\" and \"tgt\" need the same number of turns, at least one");
}

int32_t eos_of(const Tokenizer& tok) {
  const auto eos = tok.eos_ids();
  if (eos.empty()) fail("tokenizer", "has no EOS token, which fine-tuning appends to targets");
  return eos.front();
}

// tokenize_example: (source ids, target ids) under the no-template rules.
std::pair<std::vector<int32_t>, std::vector<int32_t>> plain_ids(const TextEncoder& enc, const SftRecord& rec,
                                                                const SftOptions& opt) {
  check(rec, opt);
  const Tokenizer& tok = enc.tokenizer();
  // The source: BOS + text, cut to src_length keeping its START. PaddleNLP's data.py asks for
  // truncation_side="left", but the released tokenizer (paddlenlp 2.8.1) ignores that argument and cuts from the
  // right, so that is what runs there and here. BOS counts toward the limit and is kept (the tokenizer truncates
  // before adding special tokens). A src_length that leaves no room besides BOS (1) cuts nothing: the tokenizer's
  // truncation gives up (with an error in its log) rather than remove the whole text.
  std::vector<int32_t> body = enc.encode(rec.src.front(), false);
  const bool bos = tok.bos_id() >= 0;
  const int64_t keep = opt.src_length - (bos ? 1 : 0);
  if (keep > 0 && int64_t(body.size()) > keep) body.resize(size_t(keep));
  std::vector<int32_t> src;
  if (bos) src.push_back(tok.bos_id());
  src.insert(src.end(), body.begin(), body.end());
  // The target: cut from the right; EOS only when there is still room (so never after a cut). A source that
  // leaves no room (src_length >= max_length) gives an empty target.
  const int64_t tgt_max = opt.max_length - int64_t(src.size());
  std::vector<int32_t> tgt = enc.encode(rec.tgt.front(), false);
  if (tgt_max <= 0) {
    tgt.clear();
  } else {
    if (int64_t(tgt.size()) > tgt_max) tgt.resize(size_t(tgt_max));
    if (int64_t(tgt.size()) < tgt_max) tgt.push_back(eos_of(tok));
  }
  return {std::move(src), std::move(tgt)};
}

SftExample shift(std::vector<int32_t> ids, std::vector<int32_t> labels) {
  SftExample ex;
  if (ids.empty()) return ex;
  ex.input_ids.assign(ids.begin(), ids.end() - 1);
  ex.labels.assign(labels.begin() + 1, labels.end());
  return ex;
}

SftExample chat_example(const TextEncoder& enc, const SftRecord& rec, const SftOptions& opt) {
  check(rec, opt);
  std::vector<std::pair<std::string, std::string>> conv;
  for (size_t i = 0; i < rec.src.size(); i++) conv.emplace_back(rec.src[i], rec.tgt[i]);
  ChatSegments seg;
  try {
    seg = opt.chat(conv, rec.context);
  } catch (const Error& e) {
    fail(rec.where, e.what());  // the record that the template refused or could not split
  }
  if (seg.rounds.empty()) fail(rec.where, "the chat template rendered no rounds");
  const std::vector<int32_t> system = seg.system.empty() ? std::vector<int32_t>{} : enc.encode(seg.system, false);
  if (int64_t(system.size()) >= opt.max_length)
    fail(rec.where, "the chat template's system part (" + std::to_string(system.size()) +
                        " tokens) does not fit max_length " + std::to_string(opt.max_length));
  const int64_t budget = opt.max_length - int64_t(system.size());
  std::vector<int32_t> ids, labels;  // built newest round first, each prepended
  const int64_t last = int64_t(seg.rounds.size()) - 1;
  for (int64_t r = last; r >= 0; r--) {
    std::vector<int32_t> user = enc.encode(seg.rounds[size_t(r)].first, false);
    std::vector<int32_t> bot = enc.encode(seg.rounds[size_t(r)].second, false);
    bool stop = false;
    if (int64_t(ids.size() + user.size() + bot.size()) > budget) {
      if (r < last) break;  // an older round that does not fit ends the walk
      // The newest round alone is too long: it is kept, cut (Python slices, as PaddleNLP).
      user = py_head(user, opt.src_length - int64_t(system.size()));
      bot = py_head(bot, budget - int64_t(user.size()));
      stop = true;
    }
    std::vector<int32_t> round_ids(user), round_labels(user.size(), -100);
    round_ids.insert(round_ids.end(), bot.begin(), bot.end());
    round_labels.insert(round_labels.end(), bot.begin(), bot.end());
    ids.insert(ids.begin(), round_ids.begin(), round_ids.end());
    labels.insert(labels.begin(), round_labels.begin(), round_labels.end());
    if (stop) break;
  }
  ids.insert(ids.begin(), system.begin(), system.end());
  labels.insert(labels.begin(), system.size(), -100);
  return shift(std::move(ids), std::move(labels));
}

}  // namespace

std::vector<SftRecord> read_sft_file(const std::string& path) {
  LineReader in(path);
  std::vector<SftRecord> out;
  std::string line;
  while (in.next(line)) {
    const std::string where = in.where();
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    json j = parse_json(line, where);
    if (!j.is_object()) fail(where, "each line must be a JSON object with \"src\" and \"tgt\"");
    if (!j.contains("src") || !j.contains("tgt"))
      fail(where, "missing \"src\" or \"tgt\" (each line needs both)");
    SftRecord r;
    r.where = where;
    r.src = string_list(j["src"], "src", where);
    r.tgt = string_list(j["tgt"], "tgt", where);
    if (r.src.size() != r.tgt.size())
      fail(where, "\"src\" has " + std::to_string(r.src.size()) + " turns but \"tgt\" has " +
                      std::to_string(r.tgt.size()));
    if (j.contains("context")) {
      if (!j["context"].is_object()) fail(where, "\"context\" must be an object");
      r.context = j["context"];
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string sft_split_path(const std::string& dir, const std::string& split) {
  if (!dir_exists(dir)) fail(dir, "dataset_name_or_path is not a directory (it should hold train.json and dev.json)");
  const std::string p = join_path(dir, split + ".json");
  if (!file_exists(p)) fail(p, "no such file (dataset_name_or_path needs train.json and dev.json, JSON lines)");
  return p;
}

SftExample tokenize_sft_example(const TextEncoder& enc, const SftRecord& rec, const SftOptions& opt) {
  if (opt.chat) return chat_example(enc, rec, opt);
  auto [src, tgt] = plain_ids(enc, rec, opt);
  std::vector<int32_t> ids(src), labels(src.size(), -100);
  ids.insert(ids.end(), tgt.begin(), tgt.end());
  labels.insert(labels.end(), tgt.begin(), tgt.end());
  return shift(std::move(ids), std::move(labels));
}

SftPrompt tokenize_sft_prompt(const TextEncoder& enc, const SftRecord& rec, const SftOptions& opt) {
  auto [src, tgt] = plain_ids(enc, rec, opt);
  return SftPrompt{std::move(src), std::move(tgt)};
}

std::vector<SftExample> load_sft_examples(const std::string& dataset_name_or_path, const std::string& split,
                                          const Tokenizer& tok, const SftOptions& opt,
                                          std::vector<std::string>* wheres) {
  const std::vector<SftRecord> recs = read_sft_file(sft_split_path(dataset_name_or_path, split));
  TextEncoder enc(tok, SpecialTextRule::PaddleNLP);  // the text as run_finetune.py's tokenizer reads it
  std::vector<SftExample> out;
  out.reserve(recs.size());
  for (const auto& r : recs) {
    out.push_back(tokenize_sft_example(enc, r, opt));
    if (wheres) wheres->push_back(r.where);
  }
  return out;
}

}  // namespace oar
