// Hostile input to the readers: JSON nested past the depth limit (which used to overflow the stack when the
// value was copied) and lines longer than the line limit (which used to be read whole, then tokenized whole).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <string>

#include "core/fs.h"
#include "core/json_io.h"
#include "core/line_reader.h"
#include "core/model_config.h"
#include "data/sft_dataset.h"
#include "io/safetensors.h"
#include "test_data_util.h"
#include "test_errors.h"
#include "tokenizer/tokenizer.h"
#include "train/train_args.h"

namespace oar {
namespace {

using test::fails_with;

std::string nested(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

std::string nested_objects(size_t depth) {
  std::string s;
  for (size_t i = 0; i < depth; i++) s += "{\"a\":";
  s += "1";
  s += std::string(depth, '}');
  return s;
}

TEST(JsonIo, DepthUpToTheLimitParses) {
  nlohmann::json j = parse_json(nested(kMaxJsonDepth), "ok.json");
  nlohmann::json copy = j;  // copying recurses per level: fine at the limit
  EXPECT_EQ(copy, j);
  EXPECT_TRUE(try_parse_json(nested_objects(kMaxJsonDepth)).has_value());
}

TEST(JsonIo, DeeperThanTheLimitIsOneLineNamingTheFile) {
  for (const std::string& text : {nested(kMaxJsonDepth + 1), nested(70000), nested_objects(70000),
                                  "{\"model\": " + nested_objects(100000) + "}"}) {
    EXPECT_TRUE(fails_with([&] { parse_json(text, "deep.json"); }, {"deep.json: invalid JSON", "nested deeper than"}));
    std::string error;
    bool too_deep = false;
    EXPECT_FALSE(try_parse_json(text, &error, &too_deep).has_value());
    EXPECT_TRUE(too_deep);
    EXPECT_TRUE(fails_with([&] { json_or_discarded(text, "t.json"); }, {"t.json", "nested deeper than"}));
  }
  // Unterminated nesting: the same (the limit is met before the end of the text is).
  EXPECT_TRUE(fails_with([&] { parse_json(std::string(100000, '['), "open.json"); }, {"open.json", "nested deeper"}));
}

TEST(JsonIo, SyntaxErrorsAndOtherFormats) {
  EXPECT_TRUE(fails_with([] { parse_json("{\"a\": ", "x.json"); }, {"x.json: invalid JSON: "}));
  bool too_deep = true;
  EXPECT_FALSE(try_parse_json("{% for m in messages %}", nullptr, &too_deep).has_value());
  EXPECT_FALSE(too_deep);
  EXPECT_TRUE(json_or_discarded("{{ bos_token }}", "t.jinja").is_discarded());  // Jinja text: not JSON, no error
}

TEST(JsonIo, HookSeesEveryKey) {
  int keys = 0;
  parse_json(R"({"a": {"b": 1}, "c": 2})", "h.json",
             [&](int, nlohmann::json::parse_event_t e, const nlohmann::json&) { keys += e == nlohmann::json::parse_event_t::key; });
  EXPECT_EQ(keys, 3);
}

// Every loader goes through the limit.
TEST(JsonIo, LoadersRefuseDeepJson) {
  const std::string deep = "{\"model\": " + nested(70000) + "}";
  EXPECT_TRUE(fails_with([&] { parse_bpe_json(deep, "tokenizer.json"); }, {"tokenizer.json", "nested deeper"}));
  EXPECT_TRUE(fails_with([&] { parse_hf_config(deep, "config.json"); }, {"config.json", "nested deeper"}));
  EXPECT_TRUE(fails_with([&] { parse_train_args_text(TrainMode::Finetune, deep, "args.json", {}, nullptr, 1); },
                         {"args.json", "nested deeper"}));
  std::string st(8, '\0');
  const std::string header = "{\"a\": " + nested(70000) + "}";
  const uint64_t n = header.size();
  std::memcpy(st.data(), &n, 8);
  st += header;
  EXPECT_TRUE(fails_with([&] { parse_safetensors(reinterpret_cast<const uint8_t*>(st.data()), st.size(), "m.safetensors"); },
                         {"m.safetensors: header: invalid JSON", "nested deeper"}));
  test::DataTempDir dir;
  test::write_text(dir.file("train.json"), "{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": " + nested(70000) + "}\n");
  EXPECT_TRUE(fails_with([&] { read_sft_file(dir.file("train.json")); }, {"train.json:2: invalid JSON", "nested deeper"}));
}

class LineLimit : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("OAR_MAX_LINE_BYTES", "100", 1); }
  void TearDown() override { ::unsetenv("OAR_MAX_LINE_BYTES"); }
};

TEST_F(LineLimit, LinesUpToTheLimitAndNumbers) {
  test::DataTempDir dir;
  const std::string path = dir.file("in.txt");
  test::write_text(path, "a\r\n\n" + std::string(100, 'x') + "\nlast");
  LineReader r(path);
  std::string line;
  ASSERT_TRUE(r.next(line));
  EXPECT_EQ(line, "a\r");  // as std::getline: the caller decides about '\r'
  ASSERT_TRUE(r.next(line));
  EXPECT_EQ(line, "");
  ASSERT_TRUE(r.next(line));
  EXPECT_EQ(line, std::string(100, 'x'));
  ASSERT_TRUE(r.next(line));
  EXPECT_EQ(line, "last");
  EXPECT_EQ(r.where(), path + ":4");
  EXPECT_FALSE(r.next(line));
}

TEST_F(LineLimit, ALongerLineIsAnErrorNamingFileAndLine) {
  test::DataTempDir dir;
  const std::string path = dir.file("big.json");
  test::write_text(path, "{\"src\": \"a\", \"tgt\": \"b\"}\n" + std::string(200000, 'x') + "\n{}\n");
  LineReader r(path);
  std::string line;
  ASSERT_TRUE(r.next(line));
  EXPECT_TRUE(fails_with([&] { r.next(line); }, {path + ":2: line is longer than 100 bytes", "OAR_MAX_LINE_BYTES"}));
  // The readers use it.
  EXPECT_TRUE(fails_with([&] { read_sft_file(path); }, {path + ":2: line is longer than 100 bytes"}));
}

TEST_F(LineLimit, BadSettingAndDirectories) {
  ::setenv("OAR_MAX_LINE_BYTES", "lots", 1);
  EXPECT_TRUE(fails_with([] { max_line_bytes(); }, {"OAR_MAX_LINE_BYTES", "'lots'"}));
  ::unsetenv("OAR_MAX_LINE_BYTES");
  EXPECT_EQ(max_line_bytes(), kDefaultMaxLineBytes);
  EXPECT_EQ(describe_bytes(kDefaultMaxLineBytes), "4 MiB");
  test::DataTempDir dir;
  EXPECT_TRUE(fails_with([&] { LineReader r(dir.path()); }, {dir.path(), "is a directory"}));
  EXPECT_TRUE(fails_with([&] { read_file(dir.path()); }, {dir.path(), "is a directory"}));
}

}  // namespace
}  // namespace oar
