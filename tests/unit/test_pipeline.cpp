// Pipeline parallelism: the 1F1B programs complete under blocking (rendezvous) messages for every shape, and
// TrainableLlama's stages, run one after the other in one thread, give the whole model's losses and gradients bit
// for bit, with several micro-batches in flight.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>

#include "core/model_config.h"
#include "train/parallel_groups.h"
#include "train/pipeline.h"
#include "train/trainable_llama.h"
#include "test_model_util.h"

using namespace oar;

namespace {

// A message between neighbouring stages: (forward?, micro-batch, from stage).
struct Msg {
  bool forward;
  int micro, from;
  bool operator<(const Msg& o) const { return std::tie(forward, micro, from) < std::tie(o.forward, o.micro, o.from); }
};

// An exchange as two blocking calls, the send first (what one_f_one_b's exchanges avoid).
std::vector<PipeAction> split_exchanges(const std::vector<PipeAction>& prog) {
  std::vector<PipeAction> out;
  for (const PipeAction& a : prog) {
    if (a.kind != PipeAction::Exchange || (a.send_forward < 0 && a.send_backward < 0) ||
        (a.recv_forward < 0 && a.recv_backward < 0)) {
      out.push_back(a);
      continue;
    }
    PipeAction send = a, recv = a;
    send.recv_forward = send.recv_backward = -1;
    recv.send_forward = recv.send_backward = -1;
    out.push_back(send);
    out.push_back(recv);
  }
  return out;
}

// Runs every stage's program where a send completes only when its receiver takes it (the worst case for MPI's
// large messages) and an exchange completes when both its parts have. Returns "" or what deadlocked.
std::string simulate(int stages, int micro, bool split = false) {
  const size_t n = size_t(stages);
  std::vector<std::vector<PipeAction>> prog(n);
  for (int s = 0; s < stages; s++) {
    prog[size_t(s)] = one_f_one_b(stages, s, micro);
    if (split) prog[size_t(s)] = split_exchanges(prog[size_t(s)]);
  }
  std::vector<size_t> pc(n, 0);
  // The parts of each stage's current exchange still to match: sends offered, receives wanted.
  std::vector<std::set<Msg>> offered(n), wanted(n);
  std::vector<bool> posted(n, false);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < stages; s++) {
      if (pc[size_t(s)] >= prog[size_t(s)].size()) continue;
      const PipeAction& a = prog[size_t(s)][pc[size_t(s)]];
      if (a.kind != PipeAction::Exchange) {
        pc[size_t(s)]++;
        progress = true;
        continue;
      }
      if (!posted[size_t(s)]) {
        posted[size_t(s)] = true;
        progress = true;
        if (a.send_forward >= 0) offered[size_t(s)].insert(Msg{true, a.send_forward, s});
        if (a.send_backward >= 0) offered[size_t(s)].insert(Msg{false, a.send_backward, s});
        if (a.recv_forward >= 0) wanted[size_t(s)].insert(Msg{true, a.recv_forward, s - 1});
        if (a.recv_backward >= 0) wanted[size_t(s)].insert(Msg{false, a.recv_backward, s + 1});
      }
      // Take what a neighbour offers now.
      for (auto it = wanted[size_t(s)].begin(); it != wanted[size_t(s)].end();) {
        auto& from = offered[size_t(it->from)];
        if (from.erase(*it)) {
          it = wanted[size_t(s)].erase(it);
          progress = true;
        } else {
          ++it;
        }
      }
    }
    for (int s = 0; s < stages; s++)
      if (posted[size_t(s)] && offered[size_t(s)].empty() && wanted[size_t(s)].empty()) {
        posted[size_t(s)] = false;
        pc[size_t(s)]++;
        progress = true;
      }
  }
  for (int s = 0; s < stages; s++)
    if (pc[size_t(s)] < prog[size_t(s)].size())
      return "stage " + std::to_string(s) + " stuck at action " + std::to_string(pc[size_t(s)]);
  return "";
}

}  // namespace

TEST(OneFOneB, CompletesUnderBlockingMessagesForEveryShape) {
  for (int stages = 1; stages <= 8; stages++)
    for (int micro = 1; micro <= 12; micro++) EXPECT_EQ(simulate(stages, micro), "") << stages << " stages, " << micro << " micro-batches";
  // The simulation sees the deadlock of blocking sends on both sides of an exchange.
  EXPECT_NE(simulate(2, 2, true), "");
}

// Each micro-batch's forward and backward once, backwards in forward order; at most (stages - stage) in flight, so
// slot micro % min(stages - stage, micro) is free when a forward takes it; after warm-up they alternate.
TEST(OneFOneB, EachComputeOnceInOrderWithBoundedActivations) {
  for (int stages = 1; stages <= 8; stages++)
    for (int micro = 1; micro <= 12; micro++)
      for (int s = 0; s < stages; s++) {
        std::vector<int> fwd, bwd;
        std::set<int> in_flight;
        const int slots = std::min(stages - s, micro);
        for (const PipeAction& a : one_f_one_b(stages, s, micro)) {
          if (a.kind == PipeAction::Forward) {
            for (int f : in_flight) ASSERT_NE(f % slots, a.micro % slots) << stages << "/" << s << "/" << micro;
            in_flight.insert(a.micro);
            fwd.push_back(a.micro);
          } else if (a.kind == PipeAction::Backward) {
            ASSERT_TRUE(in_flight.erase(a.micro));
            bwd.push_back(a.micro);
          } else {
            EXPECT_TRUE(s > 0 || (a.recv_forward < 0 && a.send_backward < 0));
            EXPECT_TRUE(s < stages - 1 || (a.send_forward < 0 && a.recv_backward < 0));
          }
          ASSERT_LE(int(in_flight.size()), slots);
        }
        std::vector<int> want;
        for (int i = 0; i < micro; i++) want.push_back(i);
        EXPECT_EQ(fwd, want);
        EXPECT_EQ(bwd, want);
      }
}

namespace {

LlamaConfig four_layers() { return test::small_train_config(4); }

TrainBatch batch(int64_t B, int64_t L, int seed) { return test::lm_batch(B, L, seed); }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

// Two stages of two layers each, three micro-batches of different lengths (the last without a counted token: no
// backward, as on one process): both forwards of micro-batches 0 and 1 run before their backwards (as on a first
// stage in 1F1B), so each slot must keep its own activations.
TEST(PipelineStages, StagesGiveTheWholeModelsLossAndGradients) {
  for (DType dt : {DType::F32, DType::BF16})
    for (bool recompute : {false, true}) {
      const std::string what = std::string(dtype_name(dt)) + (recompute ? " recompute" : "");
      TrainOptions whole_opt{dt, recompute};
      auto whole = TrainableLlama::random(four_layers(), whole_opt, 3);
      std::unique_ptr<TrainableLlama> stage[2];
      for (int s = 0; s < 2; s++) {
        TrainOptions o = whole_opt;
        o.pipeline_stages = 2;
        o.pipeline_stage = s;
        stage[s] = TrainableLlama::random(four_layers(), o, 3);
      }
      ASSERT_TRUE(stage[0]->first_stage() && !stage[0]->last_stage() && stage[1]->last_stage());
      EXPECT_EQ(stage[0]->parameters().front()->name, "model.embed_tokens.weight");
      EXPECT_EQ(stage[1]->parameters().front()->name, "model.layers.2.self_attn.q_proj.weight");
      EXPECT_EQ(stage[1]->parameters().back()->name, "lm_head.weight");
      std::vector<TrainBatch> batches = {batch(2, 9, 1), batch(1, 13, 2), batch(3, 5, 3)};
      std::fill(batches[2].labels.begin(), batches[2].labels.end(), -100);
      whole->zero_grad();
      stage[0]->zero_grad();
      stage[1]->zero_grad();
      std::vector<double> want;
      for (const TrainBatch& b : batches) want.push_back(whole->forward_backward(b, 0.5f));
      // Stage 0 runs F0 F1 B0 F2 B1 B2 with two slots; stage 1 each micro-batch's F and B in turn.
      std::map<int, Tensor> act;
      std::vector<double> got(batches.size());
      auto fwd0 = [&](int i) { act[i] = stage[0]->stage_forward(i % 2, batches[size_t(i)], Tensor(), 0.5f).output.contiguous(); };
      auto bwd = [&](int i) {
        StageOutput o = stage[1]->stage_forward(0, batches[size_t(i)], act[i], 0.5f);
        got[size_t(i)] = o.loss;
        Tensor g = stage[1]->stage_backward(0, Tensor()).contiguous();
        EXPECT_FALSE(stage[0]->stage_backward(i % 2, g).defined());
      };
      fwd0(0);
      fwd0(1);
      bwd(0);
      fwd0(2);
      bwd(1);
      bwd(2);
      for (size_t i = 0; i < batches.size(); i++) EXPECT_EQ(got[i], want[i]) << what << " micro-batch " << i;
      std::map<std::string, Parameter*> staged;
      for (int s = 0; s < 2; s++)
        for (Parameter* p : stage[s]->parameters()) staged[p->name] = p;
      ASSERT_EQ(staged.size(), whole->parameters().size());
      for (Parameter* p : whole->parameters()) {
        ASSERT_TRUE(staged.count(p->name)) << p->name;
        EXPECT_TRUE(same_bits(p->value.contiguous(), staged[p->name]->value.contiguous())) << what << " " << p->name;
        EXPECT_TRUE(same_bits(p->grad.contiguous(), staged[p->name]->grad.contiguous())) << what << " " << p->name;
      }
      // Evaluation through the stages.
      StageOutput e0 = stage[0]->stage_eval(batches[1], Tensor());
      LossStats s_whole;
      EXPECT_EQ(stage[1]->stage_eval(batches[1], e0.output.contiguous()).loss, whole->forward_loss(batches[1], &s_whole)) << what;
    }
}

TEST(PipelineStages, UnevenSplitAndTiedEmbeddingsAreRefused) {
  TrainOptions o;
  o.pipeline_stages = 3;
  EXPECT_THROW(TrainableLlama::random(four_layers(), o, 1), Error);
  LlamaConfig tied = four_layers();
  tied.tie_word_embeddings = true;
  o.pipeline_stages = 2;
  EXPECT_THROW(TrainableLlama::random(tied, o, 1), Error);
}

// gather_stages over an in-process group: every stage's tensors on rank 0, in stage order.
TEST(PipelineStages, GatherStagesCollectsOnTheFirst) {
  auto group = make_thread_group(3);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; r++)
    threads.emplace_back([&, r] {
      Tensor t = Tensor::empty({2, int64_t(r + 1)}, DType::F32);
      for (int64_t i = 0; i < t.numel(); i++) t.data<float>()[i] = float(10 * r + i);
      got[size_t(r)] = gather_stages(*group[size_t(r)], {{"t" + std::to_string(r), t}});
    });
  for (auto& t : threads) t.join();
  ASSERT_EQ(got[0].size(), 3u);
  EXPECT_TRUE(got[1].empty() && got[2].empty());
  for (int r = 0; r < 3; r++) {
    EXPECT_EQ(got[0][size_t(r)].first, "t" + std::to_string(r));
    EXPECT_EQ(got[0][size_t(r)].second.shape(), (Shape{2, int64_t(r + 1)}));
    EXPECT_EQ(got[0][size_t(r)].second.data<float>()[2 * (r + 1) - 1], float(10 * r + 2 * (r + 1) - 1));
  }
}

// fleet's order (data, pipe, sharding, tensor; the last fastest): a rank's coordinates, its share of the data
// (data x sharding, the same on every stage), and the line each rank logs.
TEST(ParallelLayout, CoordinatesFollowFleetsOrder) {
  const ParallelDegrees d{2, 2, 2, 1};
  const ParallelDegrees c = coordinates_of(d, 5);  // 5 = data 1 x 4 + pipe 0 x 2 + sharding 1
  EXPECT_EQ(c.data, 1);
  EXPECT_EQ(c.pipe, 0);
  EXPECT_EQ(c.sharding, 1);
  EXPECT_EQ(c.tensor, 0);
  EXPECT_EQ(dataset_rank(d, 5), 3);
  EXPECT_EQ(dataset_rank(d, 7), 3);  // stage 1 of the same replica reads the same rows
  EXPECT_EQ(dataset_rank(d, 2), 0);
  EXPECT_EQ(describe_layout(d, 6), "data 2 x pipe 2 x sharding 2 (this rank: data 1, pipe 1, sharding 0)");
  EXPECT_EQ(describe_layout(ParallelDegrees{}, 0), "one rank");
}
