// The hybrid-parallel groups of one job, laid out as PaddleNLP's fleet topology lays them: the axes in the order
// data, pipe, sharding, model (tensor), the last varying fastest. So with dp 2 x sharding 2, ranks 0 and 1 share
// a sharding group (data-parallel replica 0) and ranks 0 and 2 hold the same shard in the two replicas.
#pragma once
#include <memory>
#include <string>

#include "core/communicator.h"

namespace oar {

struct ParallelDegrees {
  int data = 1, pipe = 1, sharding = 1, tensor = 1;
};

// "data 2 x sharding 2 (this rank: data 0, sharding 1)": the degrees above 1 and this rank's coordinates on them.
std::string describe_layout(const ParallelDegrees& degrees, int rank);

// A rank's coordinate on each axis.
ParallelDegrees coordinates_of(const ParallelDegrees& degrees, int rank);
// The rank's place among the ranks that read different data (data x sharding: PaddleNLP's dataset_rank).
int dataset_rank(const ParallelDegrees& degrees, int rank);

struct ParallelGroups {
  // The ranks that differ only on that axis; null where its degree is 1.
  std::unique_ptr<Communicator> data, pipe, sharding, tensor;
  // The ranks that hold the same part of the model (the same pipeline stage): data x sharding, the group that
  // averages gradients. Never null.
  std::unique_ptr<Communicator> replicas;
};

// Splits `world` (of size data x pipe x sharding x tensor); every rank must call it.
ParallelGroups make_parallel_groups(Communicator& world, const ParallelDegrees& degrees);

}  // namespace oar
