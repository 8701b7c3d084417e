// Tokenizers: SentencePiece (tokenizer.model, via libsentencepiece), byte-level BPE (tokenizer.json, Llama-3 style,
// implemented here over PCRE2), and llama2.c's tokenizer.bin. One interface for all of them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/spm_vocab.h"

namespace oar {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text. add_bos prepends the BOS id when the tokenizer has one. Special-token strings that appear in
  // text are encoded as those tokens, as Hugging Face tokenizers do by default (split_special_tokens=False):
  // tokenizer.json's added tokens (e.g. "<|eot_id|>"); for tokenizer.model and tokenizer.bin the unk, bos and eos
  // tokens ("<unk>", "<s>", "</s>", as LlamaTokenizerFast registers them), the text between them encoded part by
  // part. Every caller (serve, predict, preprocess, chat) gets this one rule; fine-tuning data gets
  // encode_trimming_specials.
  // Text that is not valid UTF-8 has each invalid sequence replaced by U+FFFD first (tokenizer.json and
  // tokenizer.model; tokenizer.bin byte-falls-back on them as llama2.c does). Thread-safe.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  // PaddleNLP's rule for the same text, for fine-tuning data: its LlamaTokenizer (a sentencepiece "slow"
  // tokenizer, PretrainedTokenizer.tokenize) also makes special-token text the token, but drops the whitespace on
  // both sides of it ("a <unk> b" -> "a", <unk>, "b"). The SentencePiece tokenizers (tokenizer.model, tokenizer.bin)
  // do that here; tokenizer.json keeps encode's rule, as PaddleNLP's Llama-3 tokenizer (tiktoken) does.
  virtual std::vector<int32_t> encode_trimming_specials(std::string_view text, bool add_bos) const {
    return encode(text, add_bos);
  }
  // The raw bytes a token stands for when it follows other tokens (SentencePiece's U+2581 becomes ' ', byte
  // tokens <0xNN> become the byte, byte-level BPE is un-mapped to bytes). Special tokens (BOS/EOS, added special
  // tokens) give "" unless include_special. May be an incomplete UTF-8 sequence. Unknown ids give "".
  virtual std::string token_bytes(int32_t id, bool include_special = false) const = 0;
  // Whole-sequence decode, as the reference library does (SentencePiece drops the leading space of the
  // first piece when it adds a dummy prefix). Skips special tokens. Always valid UTF-8 (invalid byte sequences
  // become U+FFFD, one per maximal invalid subpart, like Python's errors="replace").
  virtual std::string decode(const std::vector<int32_t>& ids) const;
  // True when the first decoded piece loses one leading space (SentencePiece add_dummy_prefix, llama2.c).
  virtual bool strips_leading_space() const { return false; }

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;             // -1 when none
  // May be several. The first is the tokenizer's own EOS (tokenizer_config.json's eos_token when present); then
  // generation_config.json's eos_token_id(s) when that file is next to the tokenizer; then, for tokenizer.json,
  // <|end_of_text|> and <|eot_id|> when they are special tokens (Llama-3 base models end with the first,
  // Llama-3-Instruct turns with the second, so stopping at either is always right).
  virtual std::vector<int32_t> eos_ids() const = 0;
  virtual int32_t pad_id() const { return -1; }
  virtual std::string id_to_piece(int32_t id) const = 0;  // the vocabulary string, for debugging
  virtual bool is_special(int32_t id) const = 0;
  virtual std::string kind() const = 0;  // "sentencepiece", "bpe", "llama2c"
  // The Jinja chat template from tokenizer_config.json ("chat_template", or the file chat_template.jinja next
  // to it) as load_tokenizer found it; "" when none.
  virtual std::string chat_template() const { return ""; }
};

// Loads the tokenizer of a model directory: tokenizer.json (preferred when present), else tokenizer.model,
// else tokenizer.bin; bos/eos/pad and the chat template from tokenizer_config.json / special_tokens_map.json
// (the latter wins, as in transformers) and eos ids from generation_config.json when present in that directory.
// A path to a single file is accepted too (its directory is searched for those JSON files). When tokenizer.json
// uses a feature we do not implement and tokenizer.model exists (Llama-2 HF folders), tokenizer.model is used.
// Throws oar::Error naming the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The single-file loaders read only that file (no tokenizer_config.json).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);
std::unique_ptr<Tokenizer> load_bpe_json(const std::string& tokenizer_json_path);
// From text (for the fuzzer and tests); `where` names it in errors.
std::unique_ptr<Tokenizer> parse_bpe_json(std::string_view json_text, const std::string& where);
// vocab_size <= 0 reads entries until the end of the file (the model header's vocab size is not known).
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_path, int32_t vocab_size);

// A SentencePiece vocabulary given as lists (a GGUF file's; core/spm_vocab.h). Encoding is llama2.c's
// score-ordered merging, as for tokenizer.bin; unknown, control and user-defined pieces are literal specials
// (text spelling them encodes to them), and unknown and control ones are special when decoding.
// Throws oar::Error naming `where` for lists of different lengths, an empty vocabulary or ids outside it.
std::unique_ptr<Tokenizer> make_spm_vocab_tokenizer(SpmVocab vocab, const std::string& where);

// Streams decoded text token by token without ever emitting half a UTF-8 character: bytes are held back until
// the sequence is complete (an invalid sequence is emitted as U+FFFD once it cannot become valid).
// The concatenation of all push() results and flush() equals decode() of the same ids (for SentencePiece when
// the text is valid UTF-8).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Continues `context` (e.g. a prompt): what it emits is decode(context + pushed ids) minus decode(context),
  // i.e. the text the ids add in that context. So a SentencePiece piece keeps its leading space unless the
  // context decodes to nothing, and a character that the context leaves incomplete is completed by the pushes.
  StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& context);
  std::string push(int32_t id);  // text that became complete with this token (may be "")
  std::string flush();           // whatever is held back, invalid bytes as U+FFFD
 private:
  std::string take(bool final);
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
  size_t held_ = 0;  // leading bytes of pending_ that came from the context
};

// The text `ids` add after `context`: the common rule for completions (decode(context + ids) minus
// decode(context), "incremental detokenization"), which keeps e.g. the leading space of " upon" after "Once".
std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context,
                                const std::vector<int32_t>& ids);

// A token as the logprobs of the OpenAI API name it: its bytes (special tokens by their text) when they are
// valid UTF-8, else "bytes:\\xNN..." as OpenAI writes partial characters.
std::string openai_token_text(const Tokenizer& tok, int32_t id);

}  // namespace oar
