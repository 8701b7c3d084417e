// PaddleNLP's checkpoints as PaddleNLP 2.8.1 itself wrote them: tests/cli/paddle_interop.sh runs
// tests/reference/paddle_interop.py make into OAR_PADDLE_INTEROP_DIR (safetensors, pdparams, shards of each, fused
// qkv/gate_up, bfloat16, tied, and a 2-step LoRA as a pickle and as a sharded unified checkpoint), each with
// PaddleNLP's forward logits. Every variant must load through oar's one model loader and give the same logits.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/fs.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "train/lora_io.h"
#include "test_model_util.h"

namespace oar {
namespace {

namespace fs = std::filesystem;

std::vector<int32_t> ids_of(const Tensor& t) {
  std::vector<int32_t> ids;
  for (int64_t k = 0; k < t.numel(); ++k) ids.push_back(int32_t(t.data<int64_t>()[k]));
  return ids;
}

TEST(PaddleInterop, EveryVariantMatchesPaddleNlpLogits) {
  const char* env = std::getenv("OAR_PADDLE_INTEROP_DIR");
  if (!env || !*env) GTEST_SKIP() << "OAR_PADDLE_INTEROP_DIR is set by tests/cli/paddle_interop.sh (needs PaddleNLP)";
  const std::string root = env;
  int variants = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string dir = entry.path().string();
    const std::string ref_path = join_path(dir, "paddle_logits.safetensors");
    if (!file_exists(ref_path)) continue;
    SCOPED_TRACE(dir);
    WeightStore ref = WeightStore::open_file(ref_path);
    const std::vector<int32_t> ids = ids_of(ref.get("input_ids"));
    const Tensor want = ref.get("logits");
    std::unique_ptr<LlamaModel> m;
    const std::string base_txt = join_path(dir, "base.txt");
    if (file_exists(base_txt)) {
      std::string base = read_file(base_txt);
      while (!base.empty() && (base.back() == '\n' || base.back() == ' ')) base.pop_back();
      m = load_llama_with_lora(join_path(root, base), dir, DType::F32);
    } else {
      m = LlamaModel::load(dir, DType::F32);
    }
    const Tensor got = test::prompt_logits(*m, ids);
    ASSERT_EQ(got.shape(), want.shape());
    const double err = test::rel_err(got, want);
    std::printf("paddle_interop %-20s max |oar - PaddleNLP| / max |PaddleNLP| = %.3g\n",
                entry.path().filename().c_str(), err);
    EXPECT_LE(err, 1e-5);
    ++variants;
  }
  EXPECT_GE(variants, 1) << "no variant with paddle_logits.safetensors under " << root;
}

}  // namespace
}  // namespace oar
