// The glue between the arguments and the trainer: fine-tuning batch order (per-epoch shuffle by seed, every row
// once per epoch, drop_last), the Llama wrapper's checkpoint round trip (full weights and PEFT adapter), and the
// FLOP count's shape.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/fs.h"
#include "tokenizer/tokenizer.h"
#include "train/train_setup.h"

namespace oar {
namespace {

namespace fs = std::filesystem;

std::vector<PackedRow> rows_of(int n) {
  std::vector<PackedRow> rows;
  for (int i = 0; i < n; i++) {
    SftExample ex;
    for (int t = 0; t <= i % 4; t++) {
      ex.input_ids.push_back(10 + i);
      ex.labels.push_back(t == 0 ? -100 : 20 + i);
    }
    rows.push_back(single_row(ex, i));
  }
  return rows;
}

TEST(SftTrainData, EachEpochVisitsEveryRowOnceInASeededOrder) {
  SftTrainData d(rows_of(10), 3, false, 42, {});
  EXPECT_EQ(d.batches_per_epoch(), 4);  // the last batch has one row
  auto o0 = d.epoch_order(0), o1 = d.epoch_order(1);
  EXPECT_NE(o0, o1);
  EXPECT_EQ(o0, SftTrainData(rows_of(10), 3, false, 42, {}).epoch_order(0));  // same seed, same order
  EXPECT_NE(o0, SftTrainData(rows_of(10), 3, false, 43, {}).epoch_order(0));
  std::multiset<int32_t> seen;
  for (int64_t b = 0; b < d.batches_per_epoch(); b++) {
    TrainBatch tb = d.batch(1, b);
    EXPECT_EQ(tb.B, b == 3 ? 1 : 3);
    for (int64_t r = 0; r < tb.B; r++) seen.insert(tb.input_ids[size_t(r * tb.L)]);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(std::set<int32_t>(seen.begin(), seen.end()).size(), 10u);
  EXPECT_EQ(SftTrainData(rows_of(10), 3, true, 42, {}).batches_per_epoch(), 3);  // dataloader_drop_last
  // Padding to the longest row: labels -100 and segment -1 there.
  TrainBatch tb = d.batch(0, 0);
  for (int64_t i = 0; i < tb.B * tb.L; i++)
    if (tb.segment_ids[size_t(i)] < 0) {
      EXPECT_EQ(tb.labels[size_t(i)], -100);
    }
}

LlamaConfig small_config() {
  LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  return c;
}

TEST(LlamaTrainModel, CheckpointRoundTripFullAndLora) {
  const std::string dir = (fs::temp_directory_path() / ("oar_tm_" + std::to_string(::getpid()))).string();
  fs::create_directories(dir + "/full");
  fs::create_directories(dir + "/lora");
  for (bool lora : {false, true}) {
    auto make = [&](uint64_t seed) {
      auto m = TrainableLlama::random(small_config(), {}, seed);
      if (lora) {
        LoraOptions lo;
        lo.rank = 4;
        lo.alpha = 8;
        lo.seed = seed;
        m->add_lora(lo);
      }
      return std::make_unique<LlamaTrainModel>(std::move(m), "base");
    };
    auto a = make(1), b = make(lora ? 1 : 2);  // LoRA: same base, the adapters differ below
    for (Parameter* p : a->parameters())
      if (p->trainable)
        for (int64_t i = 0; i < p->value.numel(); i++) p->value.data<float>()[i] += 0.001f * float(i % 7);
    const std::string d = dir + (lora ? "/lora" : "/full");
    a->save(d);
    EXPECT_TRUE(file_exists(join_path(d, lora ? "adapter_model.safetensors" : "model.safetensors")));
    EXPECT_TRUE(file_exists(join_path(d, lora ? "adapter_config.json" : "config.json")));
    b->load(d);
    auto pa = a->parameters(), pb = b->parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); i++) {
      ASSERT_EQ(pa[i]->name, pb[i]->name);
      for (int64_t j = 0; j < pa[i]->value.numel(); j++)
        ASSERT_EQ(pa[i]->value.data<float>()[j], pb[i]->value.data<float>()[j]) << pa[i]->name;
    }
  }
  fs::remove_all(dir);
}

TEST(ChatRenderer, PaddleNLPJsonAndJinjaTemplatesSplitIntoRounds) {
  const std::string dir = (fs::temp_directory_path() / ("oar_chat_" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  auto tok = load_sentencepiece(std::string(OAR_FIXTURES_DIR) + "/tokenizers/spm/tokenizer.model");
  auto args = [&](const std::string& tmpl) {
    return parse_train_args_text(TrainMode::Finetune, "{}", "t",
                                 {"--model_name_or_path", dir, "--output_dir", dir, "--chat_template", tmpl}, nullptr);
  };
  const std::vector<std::pair<std::string, std::string>> conv = {{"hi", "hello"}, {"and?", "bye"}};
  std::string origin;

  write_file_atomic(join_path(dir, "chat_template.json"),
                    R"({"system": "You help {{name}}.", "conversation": ["[Round {{index}}] Q: {{user}} A: ", "{{bot}}\n"]})");
  ChatRenderer r = make_chat_renderer(args(join_path(dir, "chat_template.json")), *tok, &origin);
  ASSERT_TRUE(bool(r));
  ChatSegments seg = r(conv, nlohmann::json{{"name", "Ann"}});
  EXPECT_EQ(seg.system, "You help Ann.");
  ASSERT_EQ(seg.rounds.size(), 2u);
  EXPECT_EQ(seg.rounds[1].first, "[Round 1] Q: and? A: ");
  EXPECT_EQ(seg.rounds[1].second, "bye\n");

  write_file_atomic(join_path(dir, "t.jinja"),
                    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}");
  r = make_chat_renderer(args(join_path(dir, "t.jinja")), *tok, &origin);
  seg = r(conv, nlohmann::json::object());
  ASSERT_EQ(seg.rounds.size(), 2u);
  EXPECT_EQ(seg.rounds[0].first, "<s>[INST] hi [/INST]");
  EXPECT_EQ(seg.rounds[0].second, " hello</s>");
  EXPECT_EQ(seg.rounds[1].first, "[INST] and? [/INST]");

  EXPECT_FALSE(bool(make_chat_renderer(args("none"), *tok, &origin)));
  fs::remove_all(dir);
}

TEST(TrainFlops, LoraAndRecomputeChangeTheCount) {
  const double full = llama_train_flops(768, 2048, 12, 32000, 12, 12, 64, 512, 512, false, false);
  const double lora = llama_train_flops(768, 2048, 12, 32000, 12, 12, 64, 512, 512, false, true);
  const double rc = llama_train_flops(768, 2048, 12, 32000, 12, 12, 64, 512, 512, true, false);
  EXPECT_LT(lora, full);
  EXPECT_GT(rc, full);
  // About 6 x parameters x tokens plus attention: 110M-class model, 512 tokens.
  EXPECT_GT(full / 512.0, 6.0 * 110e6 * 0.9);
  EXPECT_LT(full / 512.0, 6.0 * 110e6 * 1.5);
}

}  // namespace
}  // namespace oar
