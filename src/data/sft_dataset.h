// Fine-tuning data with PaddleNLP's semantics (llm/utils/data.py; notes/paddlenlp.md §2): JSON-lines files of
// {"src": ..., "tgt": ...} turned into (input_ids, labels) with the shift already done (labels[t] is the token after
// input_ids[t]; -100 is not learned).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "data/text_encoder.h"
#include "tokenizer/tokenizer.h"

namespace oar {

// One line of train.json / dev.json. A plain string is read as a list of one; src and tgt have equal lengths.
struct SftRecord {
  std::vector<std::string> src, tgt;
  nlohmann::json context = nlohmann::json::object();  // the optional "context" object, for chat templates
  std::string where;                                  // "DIR/train.json:12", for messages
};

// Reads a JSON-lines file. Blank lines are skipped; anything else that is not an object with "src" and "tgt"
// (a string or a non-empty list of strings each, of equal lengths) is an oar::Error naming the file and line.
std::vector<SftRecord> read_sft_file(const std::string& path);
// DIR/train.json ("train") or DIR/dev.json ("dev"); a missing file is an oar::Error naming it.
std::string sft_split_path(const std::string& dataset_name_or_path, const std::string& split);

// What a chat template contributes, as text: the system part (never learned; may be empty) and, per round, the
// text before the answer (the user turn with the template's glue; not learned) and the answer itself with its
// end-of-turn marker (learned). Text is encoded without BOS; special-token strings in it become their ids.
struct ChatSegments {
  std::string system;
  std::vector<std::pair<std::string, std::string>> rounds;  // (prompt part, answer part), oldest first
};
// Renders the conversation [(user, assistant), ...] (oldest first) with a record's "context" object.
using ChatRenderer = std::function<ChatSegments(const std::vector<std::pair<std::string, std::string>>& conversation,
                                                const nlohmann::json& context)>;

struct SftOptions {
  int64_t src_length = 1024;  // PaddleNLP DataArgument defaults
  int64_t max_length = 2048;
  ChatRenderer chat;          // empty: no chat template
};

// One training example, shifted: both vectors have the same length (<= max_length - 1 for templates that fit).
struct SftExample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
  int64_t size() const { return int64_t(input_ids.size()); }
};

// Builds a training example (PaddleNLP's convert_example_common with is_test=False).
// Without a chat template: only src[0] / tgt[0]; the source gets BOS and is cut to src_length tokens keeping its
// start (BOS kept; what released PaddleNLP does, whatever truncation_side its data.py asks for); the target (no special tokens) is cut from the right to max_length - len(source); EOS is
// appended when the target is shorter than that limit; labels are -100 over the source.
// With a chat template: rounds are kept newest first while they fit in max_length - len(system); the newest is
// always kept (its user part cut to src_length - len(system), its answer to what is left); labels cover every
// kept answer. Then input_ids = ids[:-1], labels = labels[1:].
SftExample tokenize_sft_example(const TextEncoder& enc, const SftRecord& rec, const SftOptions& opt);

// Evaluation with generation (is_test=True, no chat template): the truncated source and the raw target ids
// (with EOS when it fits), unshifted, for decoding and comparing.
struct SftPrompt {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> target_ids;
};
SftPrompt tokenize_sft_prompt(const TextEncoder& enc, const SftRecord& rec, const SftOptions& opt);

// read_sft_file + tokenize_sft_example over DIR/{split}.json, the text read with PaddleNLP's special-token rule
// (SpecialTextRule::PaddleNLP). `wheres`, when given, receives each example's "DIR/split.json:LINE".
std::vector<SftExample> load_sft_examples(const std::string& dataset_name_or_path, const std::string& split,
                                          const Tokenizer& tok, const SftOptions& opt,
                                          std::vector<std::string>* wheres = nullptr);

}  // namespace oar
