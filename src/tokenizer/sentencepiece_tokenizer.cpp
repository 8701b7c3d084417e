// SentencePiece tokenizer.model through libsentencepiece: encoding and whole-sequence decoding are the library's
// own, so ids match Python's sentencepiece exactly; token_bytes maps single pieces for streaming.
#include <sentencepiece_processor.h>

#include <cstring>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

namespace oar {
namespace {

// Minimal protobuf wire-format reading, just enough to find ModelProto.normalizer_spec (field 3) and its
// add_dummy_prefix (field 3, default true): the installed library does not ship the generated message header.
struct ProtoReader {
  const uint8_t* p;
  const uint8_t* end;
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // Calls f(field, wire_type, payload_begin, payload_end, varint_value) for each field; false on bad input.
  template <class F>
  bool for_each(F&& f) {
    while (p < end) {
      uint64_t key, v = 0;
      if (!varint(key)) return false;
      uint32_t field = uint32_t(key >> 3), type = uint32_t(key & 7);
      const uint8_t* b = p;
      switch (type) {
        case 0:
          if (!varint(v)) return false;
          break;
        case 1:
          if (end - p < 8) return false;
          p += 8;
          break;
        case 2:
          if (!varint(v) || v > uint64_t(end - p)) return false;
          b = p;
          p += v;
          break;
        case 5:
          if (end - p < 4) return false;
          p += 4;
          break;
        default:
          return false;  // groups are not used by sentencepiece_model.proto
      }
      f(field, type, b, p, v);
    }
    return true;
  }
};

bool spm_adds_dummy_prefix(const std::string& serialized) {
  bool add = true;  // proto default
  auto* data = reinterpret_cast<const uint8_t*>(serialized.data());
  ProtoReader model{data, data + serialized.size()};
  model.for_each([&](uint32_t field, uint32_t type, const uint8_t* b, const uint8_t* e, uint64_t) {
    if (field != 3 || type != 2) return;
    ProtoReader norm{b, e};
    norm.for_each([&](uint32_t f2, uint32_t t2, const uint8_t*, const uint8_t*, uint64_t v) {
      if (f2 == 3 && t2 == 0) add = v != 0;
    });
  });
  return add;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

class SentencePieceTokenizer final : public tok::TokenizerBase {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    if (!file_exists(path)) fail(path, "no such file");
    auto status = sp_.Load(path);
    if (!status.ok()) fail(path, "not a SentencePiece model: " + one_line(status.ToString()));
    n_ = sp_.GetPieceSize();
    dummy_prefix_ = spm_adds_dummy_prefix(sp_.serialized_model_proto());
    bos_ = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos_.push_back(sp_.eos_id());
    pad_ = sp_.pad_id();
    unk_ = sp_.unk_id();
    for (int32_t id : {unk_, bos_, sp_.eos_id()})
      if (id >= 0 && id < n_) add_literal_special(sp_.IdToPiece(id), id);
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::string clean;
    if (!utf8_is_valid(text)) {
      clean = utf8_sanitize(text);
      text = clean;
    }
    return encode_split(text, add_bos, [this](std::string_view part, std::vector<int32_t>& out) {
      std::vector<int> ids;
      auto status = sp_.Encode(absl::string_view(part.data(), part.size()), &ids);
      if (!status.ok()) throw Error("sentencepiece: encode failed: " + one_line(status.ToString()));
      out.insert(out.end(), ids.begin(), ids.end());
    });
  }

  // PaddleNLP's LlamaTokenizer is this same sentencepiece model behind its slow tokenizer.
  std::vector<int32_t> encode_trimming_specials(std::string_view text, bool add_bos) const override {
    return encode_parts_trimmed(text, add_bos);
  }

  std::string token_bytes(int32_t id, bool include_special) const override {
    if (id < 0 || id >= n_) return "";
    // The unknown piece is a special token as in Hugging Face's tokenizers (skipped when decoding), not the
    // library's " \u2047 " surface.
    if (sp_.IsControl(id) || sp_.IsUnknown(id)) return include_special ? sp_.IdToPiece(id) : "";
    std::string piece = sp_.IdToPiece(id);
    if (sp_.IsByte(id)) {  // "<0xNN>"
      auto hex = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
      return piece.size() == 6 ? std::string(1, char(hex(piece[3]) * 16 + hex(piece[4]))) : "";
    }
    std::string out;
    out.reserve(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) {
      if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581, SentencePiece's visible space
        out += ' ';
        i += 2;
      } else {
        out += piece[i];
      }
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (int32_t id : ids)
      if (id >= 0 && id < n_ && id != unk_) v.push_back(id);  // the library aborts on out-of-range ids
    return utf8_sanitize(sp_.DecodeIds(v));
  }

  bool strips_leading_space() const override { return dummy_prefix_; }
  int32_t vocab_size() const override { return n_; }
  std::string id_to_piece(int32_t id) const override { return id >= 0 && id < n_ ? sp_.IdToPiece(id) : ""; }
  bool is_special(int32_t id) const override { return id >= 0 && id < n_ && (sp_.IsControl(id) || id == unk_); }
  std::string kind() const override { return "sentencepiece"; }

  int32_t token_to_id(std::string_view text) const override {
    int id = sp_.PieceToId(absl::string_view(text.data(), text.size()));
    // PieceToId answers unk_id for anything unknown.
    if (id == unk_ && sp_.IdToPiece(id) != text) return -1;
    return id;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  int32_t n_ = 0;
  int32_t unk_ = -1;
  bool dummy_prefix_ = true;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace oar
