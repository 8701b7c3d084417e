#include "train/parallel_groups.h"

#include <array>
#include <string>

#include "core/error.h"

namespace oar {
namespace {

std::array<int, 4> sizes(const ParallelDegrees& d) { return {d.data, d.pipe, d.sharding, d.tensor}; }
constexpr const char* kAxisNames[4] = {"data", "pipe", "sharding", "tensor"};

int stride_of(const std::array<int, 4>& n, int axis) {
  int stride = 1;
  for (int a = 3; a > axis; a--) stride *= n[size_t(a)];
  return stride;
}

// The group along `axis`: colour = the rank with that coordinate zeroed (the same for the whole group), key = the
// coordinate on the axis.
std::unique_ptr<Communicator> axis_group(Communicator& world, const ParallelDegrees& d, int axis) {
  const std::array<int, 4> n = sizes(d);
  if (n[size_t(axis)] == 1) return nullptr;
  const int stride = stride_of(n, axis);
  const int coord = world.rank() / stride % n[size_t(axis)];
  return world.split(world.rank() - coord * stride, coord);
}

}  // namespace

std::string describe_layout(const ParallelDegrees& d, int rank) {
  const std::array<int, 4> n = sizes(d);
  std::string degrees, coords;
  for (int a = 0; a < 4; a++) {
    if (n[size_t(a)] == 1) continue;
    degrees += (degrees.empty() ? "" : " x ") + std::string(kAxisNames[a]) + " " + std::to_string(n[size_t(a)]);
    coords += (coords.empty() ? "" : ", ") + std::string(kAxisNames[a]) + " " +
              std::to_string(rank / stride_of(n, a) % n[size_t(a)]);
  }
  return degrees.empty() ? "one rank" : degrees + " (this rank: " + coords + ")";
}

ParallelDegrees coordinates_of(const ParallelDegrees& d, int rank) {
  const std::array<int, 4> n = sizes(d);
  std::array<int, 4> c{};
  for (int a = 0; a < 4; a++) c[size_t(a)] = rank / stride_of(n, a) % n[size_t(a)];
  return ParallelDegrees{c[0], c[1], c[2], c[3]};
}

int dataset_rank(const ParallelDegrees& d, int rank) {
  const ParallelDegrees c = coordinates_of(d, rank);
  return c.data * d.sharding + c.sharding;
}

ParallelGroups make_parallel_groups(Communicator& world, const ParallelDegrees& d) {
  const int product = d.data * d.pipe * d.sharding * d.tensor;
  if (product != world.size())
    throw Error("parallel groups: data " + std::to_string(d.data) + " x pipe " + std::to_string(d.pipe) + " x sharding " +
                std::to_string(d.sharding) + " x tensor " + std::to_string(d.tensor) + " != world size " +
                std::to_string(world.size()));
  ParallelGroups g;
  g.data = axis_group(world, d, 0);
  g.pipe = axis_group(world, d, 1);
  g.sharding = axis_group(world, d, 2);
  g.tensor = axis_group(world, d, 3);
  // Colour: the pipe and tensor coordinates; key: the dataset rank.
  const ParallelDegrees c = coordinates_of(d, world.rank());
  g.replicas = world.split(c.pipe * d.tensor + c.tensor, dataset_rank(d, world.rank()));
  return g;
}

}  // namespace oar
