#include "data/preprocess.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/line_reader.h"
#include "core/utf8.h"
#include "data/text_encoder.h"

namespace oar {

std::string collapse_repeated_chars(std::string_view text, int64_t max_repeated_len) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t len;
    const uint32_t cp = utf8_code_point(text, i, len);
    // The run of this same character starting at i.
    size_t j = i + len;
    int64_t count = 1;
    while (j + len <= text.size() && text.compare(j, len, text.substr(i, len)) == 0) {
      j += len;
      count++;
    }
    if (cp != '\n' && count > max_repeated_len) out.append(text.substr(i, len));
    else out.append(text.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<std::string> list_jsonl_inputs(const std::string& input_path) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  auto is_jsonl = [](const std::string& p) { return p.size() > 6 && p.compare(p.size() - 6, 6, ".jsonl") == 0; };
  if (file_exists(input_path)) {
    if (input_path.size() > 4 && input_path.compare(input_path.size() - 4, 4, ".zst") == 0)
      fail(input_path, "zstd-compressed input is not supported; decompress it to .jsonl first");
    if (!is_jsonl(input_path)) fail(input_path, "not a .jsonl file (one JSON object per line)");
    return {input_path};
  }
  if (!dir_exists(input_path)) fail(input_path, "no such file or directory");
  std::error_code ec;
  for (fs::recursive_directory_iterator it(input_path, fs::directory_options::follow_directory_symlink, ec), end;
       !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string p = it->path().string();
    if (is_jsonl(p)) files.push_back(p);
  }
  if (ec) fail(input_path, "cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail(input_path, "no .jsonl files found");
  return files;
}

namespace {

struct Doc {
  std::vector<std::vector<int32_t>> sequences;
  int64_t bytes = 0;
};

// One input line -> the document's sequences (create_pretraining_data.py's Converter.encode).
Doc encode_line(const std::string& line, const std::string& where, const PreprocessOptions& opt,
                const TextEncoder& enc, int32_t eos) {
  const nlohmann::json j = parse_json(line, where);
  if (!j.is_object()) fail(where, "each line must be a JSON object");
  auto it = j.find(opt.json_key);
  if (it == j.end()) fail(where, "no \"" + opt.json_key + "\" key (see --json_key)");
  if (!it->is_string()) fail(where, "\"" + opt.json_key + "\" is not a string");
  const std::string text = collapse_repeated_chars(it->get_ref<const std::string&>(), opt.max_repeated_len);
  Doc doc;
  doc.bytes = int64_t(text.size());
  auto add = [&](std::string_view sentence) {
    std::vector<int32_t> ids = enc.encode(python_strip(sentence), false);
    if (!ids.empty()) doc.sequences.push_back(std::move(ids));
  };
  if (opt.split_sentences) {
    size_t start = 0;
    while (true) {
      size_t nl = text.find('\n', start);
      add(std::string_view(text).substr(start, nl == std::string::npos ? std::string::npos : nl - start));
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  } else {
    add(text);
  }
  if (!doc.sequences.empty() && opt.append_eos) doc.sequences.back().push_back(eos);
  return doc;
}

// The directory of PREFIX.bin/.idx, created as `mkdir -p` would; unless keep() is called, the directories it
// made are removed again (a failed run leaves nothing behind).
class OutputDirectory {
 public:
  explicit OutputDirectory(const std::string& prefix) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(prefix).parent_path();
    if (dir.empty()) return;
    std::error_code ec;
    for (fs::path p = dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) made_ = p;
    fs::create_directories(dir, ec);
    if (ec) fail(prefix, "cannot create the directory " + dir.string() + ": " + ec.message());
  }
  ~OutputDirectory() {
    std::error_code ec;
    if (!kept_ && !made_.empty()) std::filesystem::remove_all(made_, ec);
  }
  void keep() { kept_ = true; }

 private:
  std::filesystem::path made_;  // the outermost directory this created (empty: none)
  bool kept_ = false;
};

}  // namespace

PreprocessStats preprocess_corpus(const PreprocessOptions& opt, const Tokenizer& tok, std::FILE* progress) {
  if (opt.output_prefix.empty()) fail("--output_prefix", "not set");
  if (opt.max_repeated_len < 0) fail("--max_repeated_len", "must be >= 0");
  const std::vector<std::string> files = list_jsonl_inputs(opt.input_path);
  int32_t eos = -1;
  if (opt.append_eos) {
    if (tok.eos_ids().empty()) fail("--append_eos", "the tokenizer has no EOS token");
    eos = tok.eos_ids().front();
  }
  PreprocessStats st;
  st.dtype = indexed_dtype_for_vocab(tok.vocab_size());
  const TextEncoder enc(tok);
  OutputDirectory out_dir(opt.output_prefix);
  IndexedDatasetWriter writer(opt.output_prefix, st.dtype);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto last_report = t0;
  const size_t chunk = 1024;  // lines tokenized together (in parallel with --workers)
  const size_t chunk_byte_budget = max_line_bytes();
  bool stop = false;
  for (const std::string& path : files) {
    if (stop) break;
    LineReader in(path);
    st.files++;
    std::vector<std::string> lines;
    std::vector<int64_t> numbers;
    while (!stop) {
      lines.clear();
      numbers.clear();
      std::string line;
      size_t chunk_bytes = 0;  // a chunk holds at most about one line's limit of text (and 1024 lines)
      while (lines.size() < chunk && chunk_bytes < chunk_byte_budget &&
             st.lines + int64_t(lines.size()) < opt.max_doc_num && in.next(line)) {
        if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;  // blank lines are not documents
        chunk_bytes += line.size();
        lines.push_back(std::move(line));
        numbers.push_back(in.line_number());
      }
      if (lines.empty()) break;
      std::vector<Doc> docs(lines.size());
      std::vector<std::string> errors(lines.size());
#pragma omp parallel for schedule(dynamic, 16) num_threads(opt.workers > 0 ? opt.workers : 1)
      for (size_t k = 0; k < lines.size(); k++) {
        try {
          docs[k] = encode_line(lines[k], path + ":" + std::to_string(numbers[k]), opt, enc, eos);
        } catch (const std::exception& e) {
          errors[k] = e.what();
        }
      }
      for (size_t k = 0; k < lines.size(); k++) {
        if (!errors[k].empty()) throw Error(errors[k]);  // the first bad line in file order
        st.lines++;
        st.bytes += docs[k].bytes;
        if (docs[k].sequences.empty()) continue;  // nothing left after stripping: no document
        for (const auto& s : docs[k].sequences) writer.add_item(s);
        writer.end_document();
        if (progress && opt.log_interval > 0 && st.lines % opt.log_interval == 0) {
          const auto now = clock::now();
          if (now - last_report >= std::chrono::seconds(1)) {
            const double secs = std::chrono::duration<double>(now - t0).count();
            std::fprintf(progress, "Processed %lld documents (%.2f docs/s, %.4f MB/s).\n", (long long)st.lines,
                         double(st.lines) / secs, double(st.bytes) / secs / 1024 / 1024);
            std::fflush(progress);
            last_report = now;
          }
        }
      }
      if (st.lines >= opt.max_doc_num) stop = true;
    }
  }
  st.documents = writer.num_documents();
  st.sequences = writer.num_sequences();
  st.tokens = writer.num_tokens();
  writer.finalize();
  out_dir.keep();
  return st;
}

}  // namespace oar
