// `oar preprocess`: JSON-lines text -> PREFIX.bin / PREFIX.idx for `oar pretrain`, with the flags of PaddleNLP's
// llm/tools/preprocess/create_pretraining_data.py. Progress on stderr, one summary line on stdout.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/flags.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "tokenizer/tokenizer.h"

namespace oar::cli {

Action add_preprocess(CLI::App& app) {
  struct Args {
    PreprocessOptions opt;
    std::string model, data_format = "JSON", data_impl = "mmap";
    bool chinese = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model, "tokenizer directory (or file)")->required();
  app.add_option("--input_path", a->opt.input_path, "a .jsonl file or a directory searched for *.jsonl")->required();
  app.add_option("--output_prefix", a->opt.output_prefix, "writes PREFIX.bin and PREFIX.idx")->required();
  app.add_option("--json_key", a->opt.json_key, "the key holding each document's text")->capture_default_str();
  app.add_flag("--append_eos", a->opt.append_eos, "append EOS to every document");
  app.add_option("--data_format", a->data_format, "only JSON")->capture_default_str();
  app.add_option("--data_impl", a->data_impl, "only mmap (the MMIDIDX format)")->capture_default_str();
  app.add_flag("--split_sentences", a->opt.split_sentences, "one sequence per line of text (with --chinese)");
  app.add_flag("--chinese", a->chinese, "split sentences on newlines");
  app.add_option("--max_repeated_len", a->opt.max_repeated_len,
                 "runs of more identical characters collapse to one")->capture_default_str()->check(non_negative_int());
  app.add_option("--max_doc_num", a->opt.max_doc_num, "stop after this many documents")->check(positive_int());
  app.add_option("--workers", a->opt.workers, "tokenizing threads")->capture_default_str()->check(positive_int(1024));
  app.add_option("--log_interval", a->opt.log_interval, "progress every N documents")->capture_default_str()
      ->check(positive_int());
  return [a]() -> int {
    if (a->data_format != "JSON" && a->data_format != "json")
      fail("--data_format", "'" + a->data_format + "' is not supported (JSON lines only)");
    if (a->data_impl != "mmap") fail("--data_impl", "'" + a->data_impl + "' is not supported (mmap only)");
    if (a->opt.split_sentences && !a->chinese)
      fail("--split_sentences", "sentence splitting needs NLTK's punkt in PaddleNLP; use it with --chinese, "
                                "which splits on newlines");
    auto tok = load_tokenizer(a->model);
    const auto t0 = std::chrono::steady_clock::now();
    PreprocessStats st = preprocess_corpus(a->opt, *tok, stderr);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s.bin and %s.idx (%s): %lld documents, %lld sequences, %lld tokens from %lld files "
                "in %.1f s\n",
                a->opt.output_prefix.c_str(), a->opt.output_prefix.c_str(), indexed_dtype_name(st.dtype),
                (long long)st.documents, (long long)st.sequences, (long long)st.tokens, (long long)st.files, secs);
    return 0;
  };
}

}  // namespace oar::cli
