// `oar preprocess`: JSON-lines text -> PREFIX.bin / PREFIX.idx, as PaddleNLP's
// llm/tools/preprocess/create_pretraining_data.py (notes/paddlenlp.md §3.3).
#pragma once
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "core/utf8.h"
#include "data/indexed_dataset.h"
#include "tokenizer/tokenizer.h"

namespace oar {

struct PreprocessOptions {
  std::string input_path;     // a .jsonl file, or a directory searched recursively for *.jsonl
  std::string output_prefix;  // writes output_prefix.bin and output_prefix.idx
  std::string json_key = "text";
  bool append_eos = false;            // EOS after each document's last sequence
  bool split_sentences = false;       // one sequence per line of text (PaddleNLP's --split_sentences --chinese)
  int64_t max_repeated_len = 100;     // runs of more identical characters collapse to one
  int64_t max_doc_num = std::numeric_limits<int64_t>::max();  // stop after this many input lines
  int workers = 1;                    // tokenizing threads
  int64_t log_interval = 100;         // progress every this many documents (at most once a second)
};

struct PreprocessStats {
  int64_t files = 0, lines = 0;                     // inputs read
  int64_t documents = 0, sequences = 0, tokens = 0;  // written
  int64_t bytes = 0;                                 // UTF-8 bytes of text read
  IndexedDType dtype = IndexedDType::U16;
};

// Runs the whole conversion; progress lines go to `progress` when not null. Bad input (no .jsonl files, a line
// that is not a JSON object, a missing or non-string key) is an oar::Error naming the file and line; the outputs
// appear only when everything succeeded.
PreprocessStats preprocess_corpus(const PreprocessOptions& opt, const Tokenizer& tok, std::FILE* progress);

// The *.jsonl files under `input_path`, sorted by path (a single file is returned as is when it ends in .jsonl).
std::vector<std::string> list_jsonl_inputs(const std::string& input_path);
// Python's re.sub(r"(.)\1{N,}", r"\1", text) with N = max_repeated_len: a character repeated more than N times in
// a row (newlines excepted, as "." does not match them) becomes one.
std::string collapse_repeated_chars(std::string_view text, int64_t max_repeated_len);
// python_strip (Python's str.strip()) is in core/utf8.h.

}  // namespace oar
