// RangeShards: data parallelism's update split by ranges of the flat buffers, on in-process thread groups. Every
// element belongs to exactly one rank's pieces; the ring sums and gathers make each rank's view whole; an AdamW over
// the pieces steps the weights exactly as one over the whole parameters; the moments go whole to rank 0 and back.
#include <gtest/gtest.h>

#include <map>

#include "core/communicator.h"
#include "kernels/backend.h"
#include "train/flat_params.h"
#include "train/optimizer.h"
#include "train/range_shards.h"
#include "test_ranks_util.h"

namespace oar {
namespace {

// Three parameters in one flat layout (padding between the slots), weights and gradients that depend on the rank.
// The ranges of 2 and of 3 ranks both cut "a.weight" (slots at 0, 96 and 112; 172 floats).
struct FlatParams {
  FlatLayout layout;
  Tensor values, grads;
  std::vector<Parameter> ps;
  std::vector<Parameter*> ptrs;
  explicit FlatParams(int rank) {
    for (auto [name, n] : {std::pair<const char*, int64_t>{"a.weight", 90}, {"norm.weight", 5}, {"b.weight", 60}})
      layout.add(name, {n});
    values = layout.allocate(cpu_backend());
    grads = layout.allocate(cpu_backend());
    for (const FlatSlot& s : layout.slots()) {
      Parameter p;
      p.name = s.name;
      p.value = FlatLayout::view(values, s);
      p.grad = FlatLayout::view(grads, s);
      for (int64_t i = 0; i < s.numel; i++) {
        p.value.data<float>()[i] = 0.01f * float(i + s.offset);
        p.grad.data<float>()[i] = 0.5f * float(rank + 1) + 0.125f * float(i % 8);  // sums exact in any order
      }
      ps.push_back(p);
    }
    for (Parameter& p : ps) ptrs.push_back(&p);
  }
};

TEST(RangeShards, EachElementIsOneRanksAndAStepMatchesTheWholeUpdate) {
  for (int size : {2, 3}) {
    // The reference: one AdamW over the whole parameters with the summed gradients.
    FlatParams ref(0);
    for (Parameter* p : ref.ptrs)
      for (int64_t i = 0; i < p->grad.numel(); i++) {
        float sum = 0;
        for (int r = 0; r < size; r++) sum += 0.5f * float(r + 1) + 0.125f * float(i % 8);
        p->grad.data<float>()[i] = sum;
      }
    AdamWConfig cfg;
    cfg.weight_decay = 0.1;
    AdamW whole(cfg, ref.ptrs);
    whole.step(0.01);
    const auto whole_moments = whole.state_tensors();

    on_ranks(size, [&](Communicator& c) {
      FlatParams mine(c.rank());
      auto ranges = RangeShards::make(mine.ptrs, c);
      ASSERT_TRUE(ranges);
      int64_t held = 0;
      for (Parameter* p : ranges->pieces()) held += p->value.numel();
      double all = double(held);
      c.all_reduce(&all, 1);
      EXPECT_EQ(int64_t(all), 90 + 5 + 60) << "every element in exactly one rank's pieces";
      ranges->reduce_scatter_grads();
      AdamW part(cfg, ranges->pieces());
      part.step(0.01);
      ranges->all_gather_values();
      for (size_t i = 0; i < mine.ps.size(); i++)
        for (int64_t j = 0; j < mine.ps[i].value.numel(); j++)
          EXPECT_EQ(mine.ps[i].value.data<float>()[j], ref.ps[i].value.data<float>()[j])
              << size << " ranks, rank " << c.rank() << ", " << mine.ps[i].name << "[" << j << "]";
      // The moments: whole on rank 0, equal to the whole AdamW's; cut back to pieces, they load and gather again.
      const auto gathered = ranges->gather_moments(part);
      if (c.rank() != 0) {
        EXPECT_TRUE(gathered.empty());
      } else {
        ASSERT_EQ(gathered.size(), whole_moments.size());
        for (size_t k = 0; k < gathered.size(); k++) {
          EXPECT_EQ(gathered[k].first, whole_moments[k].first);
          EXPECT_EQ(gathered[k].second.shape(), whole_moments[k].second.shape());
          for (int64_t j = 0; j < gathered[k].second.numel(); j++)
            EXPECT_EQ(gathered[k].second.data<float>()[j], whole_moments[k].second.data<float>()[j]) << gathered[k].first;
        }
      }
      std::map<std::string, Tensor> by_name(whole_moments.begin(), whole_moments.end());
      AdamW reloaded(cfg, ranges->pieces());
      reloaded.load_state(ranges->pieces_of(by_name, "ckpt"), 1, "ckpt");
      const auto again = ranges->gather_moments(reloaded);
      if (c.rank() == 0) {
        ASSERT_EQ(again.size(), whole_moments.size());
        for (size_t k = 0; k < again.size(); k++)
          for (int64_t j = 0; j < again[k].second.numel(); j++)
            EXPECT_EQ(again[k].second.data<float>()[j], whole_moments[k].second.data<float>()[j]);
      }
      // A wrong shape or a missing moment fails on every rank, whether or not it holds a piece of it.
      by_name["b.weight.exp_avg"] = Tensor::empty({6, 10}, DType::F32);
      EXPECT_THROW(ranges->pieces_of(by_name, "ckpt"), Error);
      by_name.erase("b.weight.exp_avg");
      EXPECT_THROW(ranges->pieces_of(by_name, "ckpt"), Error);
    });
  }
}

TEST(RangeShards, NoneWithoutOneSpanOrWithOneRank) {
  on_ranks(2, [](Communicator& c) {
    FlatParams mine(c.rank());
    std::vector<Parameter*> gap = {mine.ptrs[0], mine.ptrs[2]};  // "norm.weight" between them is not in the list
    EXPECT_FALSE(RangeShards::make(gap, c));
    std::vector<Parameter*> reordered = {mine.ptrs[1], mine.ptrs[0], mine.ptrs[2]};
    EXPECT_FALSE(RangeShards::make(reordered, c));
    Parameter apart;  // allocated on its own
    apart.name = "c.weight";
    apart.value = Tensor::empty({4}, DType::F32);
    apart.grad = Tensor::empty({4}, DType::F32);
    std::vector<Parameter*> with_apart = mine.ptrs;
    with_apart.push_back(&apart);
    EXPECT_FALSE(RangeShards::make(with_apart, c));
    EXPECT_TRUE(RangeShards::make(mine.ptrs, c));
  });
  auto one = make_single_process_communicator();
  FlatParams mine(0);
  EXPECT_FALSE(RangeShards::make(mine.ptrs, *one));
}

}  // namespace
}  // namespace oar
