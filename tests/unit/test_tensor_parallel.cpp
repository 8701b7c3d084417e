// Tensor parallelism: parts of whole tensors, and a model split over two ranks (threads of an in-process group,
// each with its own CPU backend) computing the whole model's loss and, part by part, its gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <thread>

#include "core/communicator.h"
#include "kernels/backend.h"
#include "train/tensor_parallel.h"
#include "train/trainable_llama.h"
#include "test_model_util.h"

using namespace oar;

namespace {

Tensor counting(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); i++) t.data<float>()[i] = float(i);
  return t;
}

// max |a - b| / max |b|
double rel_err(const Tensor& a0, const Tensor& b0) {
  const Tensor a = a0.contiguous(), b = b0.contiguous();
  return test::max_rel(a.data<float>(), b.data<float>(), b.numel());
}

TrainBatch batch(int64_t B, int64_t L, int seed) { return test::lm_batch(B, L, seed); }

}  // namespace

TEST(TensorParallel, SplitDimensionsFollowMegatron) {
  EXPECT_EQ(tensor_split_dim("model.layers.3.self_attn.q_proj.weight"), 0);
  EXPECT_EQ(tensor_split_dim("model.layers.3.self_attn.k_proj.bias"), 0);
  EXPECT_EQ(tensor_split_dim("model.layers.3.mlp.up_proj.weight.exp_avg_sq"), 0);
  EXPECT_EQ(tensor_split_dim("model.layers.3.self_attn.o_proj.weight"), 1);
  EXPECT_EQ(tensor_split_dim("model.layers.3.mlp.down_proj.weight.exp_avg"), 1);
  EXPECT_EQ(tensor_split_dim("model.embed_tokens.weight"), 0);
  EXPECT_EQ(tensor_split_dim("lm_head.weight"), 0);
  EXPECT_EQ(tensor_split_dim("model.layers.3.input_layernorm.weight"), -1);
  EXPECT_EQ(tensor_split_dim("model.norm.weight"), -1);
}

// take_part and join_parts are inverse along either dimension; an uneven split is refused.
TEST(TensorParallel, PartsJoinIntoTheWhole) {
  const Tensor whole = counting({4, 6});
  for (int dim : {0, 1}) {
    auto group = make_thread_group(2);
    Tensor joined[2];
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; r++)
      threads.emplace_back([&, r] { joined[r] = join_parts(*group[size_t(r)], take_part(whole, dim, 2, r), dim); });
    for (auto& t : threads) t.join();
    for (int r = 0; r < 2; r++) {
      ASSERT_EQ(joined[r].shape(), whole.shape());
      EXPECT_EQ(std::memcmp(joined[r].raw(), whole.raw(), whole.nbytes()), 0) << "dim " << dim;
    }
  }
  EXPECT_EQ(take_part(whole, 1, 3, 2).data<float>()[0], 4.0f);  // row 0, columns 4..5
  EXPECT_THROW(take_part(whole, 1, 4, 0), Error);
}

// Two ranks, each with half the heads, MLP features and vocabulary, give the whole model's loss (the same bits on
// both) and, part by part, its gradients; the norms' gradients (whole on each rank) agree bit for bit.
TEST(TensorParallel, TwoRanksGiveTheWholeModelsLossAndGradients) {
  for (bool tied : {false, true})
    for (DType dt : {DType::F32, DType::BF16}) {
      const std::string what = std::string(dtype_name(dt)) + (tied ? " tied" : "");
      LlamaConfig cfg = test::small_train_config(2);
      cfg.tie_word_embeddings = tied;
      const std::vector<TrainBatch> batches = {batch(2, 9, 1), batch(1, 13, 2)};
      auto whole = TrainableLlama::random(cfg, TrainOptions{dt, false}, 5);
      whole->zero_grad();
      std::vector<double> want;
      for (const TrainBatch& b : batches) want.push_back(whole->forward_backward(b, 0.5f));
      LossStats want_eval;
      const double want_eval_loss = whole->forward_loss(batches[1], &want_eval);

      auto group = make_thread_group(2);
      std::unique_ptr<Backend> backends[2] = {make_backend("cpu"), make_backend("cpu")};
      std::unique_ptr<TrainableLlama> part[2];
      std::vector<double> got[2];
      LossStats eval[2];
      double eval_loss[2] = {0, 0};
      std::vector<std::thread> threads;
      for (int r = 0; r < 2; r++)
        threads.emplace_back([&, r] {
          TrainOptions o{dt, false};
          o.tensor_parallel = 2;
          o.tensor_rank = r;
          part[r] = TrainableLlama::random(cfg, o, 5, *backends[r]);
          part[r]->set_tensor_group(*group[size_t(r)]);
          part[r]->zero_grad();
          for (const TrainBatch& b : batches) got[r].push_back(part[r]->forward_backward(b, 0.5f));
          eval_loss[r] = part[r]->forward_loss(batches[1], &eval[r]);
        });
      for (auto& t : threads) t.join();
      for (size_t i = 0; i < batches.size(); i++) {
        EXPECT_EQ(got[0][i], got[1][i]) << what;
        EXPECT_NEAR(got[0][i], want[i], 2e-6 * want[i]) << what << " micro-batch " << i;
      }
      EXPECT_EQ(eval_loss[0], eval_loss[1]);
      EXPECT_NEAR(eval_loss[0], want_eval_loss, 2e-6 * want_eval_loss) << what;
      EXPECT_EQ(eval[0].tokens, want_eval.tokens);
      EXPECT_EQ(eval[0].correct, want_eval.correct);
      const double tol = dt == DType::F32 ? 1e-5 : 2e-2;
      for (Parameter* p : whole->parameters()) {
        const int dim = tensor_split_dim(p->name);
        for (int r = 0; r < 2; r++) {
          Parameter* q = part[r]->find(p->name);
          ASSERT_NE(q, nullptr) << p->name;
          const Tensor mine = dim < 0 ? p->grad.contiguous() : take_part(p->grad.contiguous(), dim, 2, r);
          ASSERT_EQ(q->grad.shape(), mine.shape()) << p->name;
          EXPECT_LE(rel_err(q->grad, mine), tol) << what << " " << p->name << " rank " << r;
          if (dim >= 0) EXPECT_EQ(rel_err(q->value, take_part(p->value.contiguous(), dim, 2, r)), 0) << p->name;
        }
        if (dim < 0) {
          const Tensor a = part[0]->find(p->name)->grad.contiguous(), b = part[1]->find(p->name)->grad.contiguous();
          EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what << " " << p->name << ": the ranks differ";
        }
      }
    }
}

TEST(TensorParallel, UnevenSplitIsRefused) {
  TrainOptions o;
  o.tensor_parallel = 3;  // 4 heads
  EXPECT_THROW(TrainableLlama::random(test::small_train_config(2), o, 1), Error);
}

// The vocab-split cross-entropy over two ranks (each half of the columns) gives the whole one's loss, counts (the
// first maximum decides a hit, as one process's argmax: a label tied with an earlier column misses) and gradient.
TEST(TensorParallel, SplitCrossEntropyEqualsTheWholeOne) {
  const int64_t R = 5, V = 12, half = V / 2;
  Tensor logits = Tensor::empty({R, V}, DType::F32);
  for (int64_t i = 0; i < R * V; i++) logits.data<float>()[i] = float((i * 37) % 11) * 0.3f - 1.0f;
  float* tie = logits.data<float>() + 3 * V;
  tie[2] = tie[9] = 9.0f;  // row 3: two maxima, in different halves
  float* hit = logits.data<float>() + 4 * V;
  hit[7] = 8.0f;  // row 4: its label's logit is the maximum
  const int32_t labels[R] = {1, -100, 11, 9, 7};
  Tensor whole = Tensor::empty({R, V}, DType::F32);  // a copy: the whole kernel writes its gradient in place
  std::memcpy(whole.raw(), logits.raw(), logits.nbytes());
  auto be = make_backend("cpu");
  const CrossEntropyResult want = be->train_ops().cross_entropy(whole, labels, 0.5f, true);
  ASSERT_EQ(want.counted, 4);
  ASSERT_EQ(want.correct, 1);  // row 4 only: row 3's label is the second of two equal maxima

  auto group = make_thread_group(2);
  CrossEntropyResult got[2];
  Tensor part[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; r++)
    threads.emplace_back([&, r] {
      auto mine = make_backend("cpu");
      TensorGroup tg(*group[size_t(r)]);
      part[r] = take_part(logits, 1, 2, r);
      got[r] = mine->train_ops().cross_entropy_split(part[r], labels, r * half, V, 0.5f, true,
                                                     [&](float* v, int64_t n, ReduceOp op) { tg.combine(v, n, op); });
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; r++) {
    EXPECT_NEAR(got[r].loss_sum, want.loss_sum, 1e-5 * want.loss_sum);
    EXPECT_EQ(got[r].counted, want.counted);
    EXPECT_EQ(got[r].correct, want.correct);
    EXPECT_LE(rel_err(part[r], take_part(whole, 1, 2, r)), 1e-5) << "rank " << r << "'s gradient columns";
  }
  EXPECT_EQ(got[0].loss_sum, got[1].loss_sum);
}
