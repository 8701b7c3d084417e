// Flat float32 buffers addressable by name: parameters, their gradients and the optimizer's moments each live in
// one buffer per group, and a parameter's tensor is a view at its slot. One buffer per group is what a later
// parallel layout needs: ZeRO shards it by ranges, a gradient all-reduce is one call, a re-layout is a copy.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/backend.h"

namespace oar {

struct FlatSlot {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // elements from the start of the buffer
  int64_t numel = 0;
};

class FlatLayout {
 public:
  // Appends a slot; each starts on a 64-byte boundary (16 floats), as the kernels' own allocations do.
  const FlatSlot& add(const std::string& name, const Shape& shape);
  int64_t numel() const { return numel_; }  // the buffer's size, padding included
  const std::vector<FlatSlot>& slots() const { return slots_; }
  const FlatSlot* find(const std::string& name) const;
  // A zero-filled float32 buffer of this layout on `backend`.
  Tensor allocate(Backend& backend) const;
  // The view of slot s in a buffer of this layout.
  static Tensor view(const Tensor& buffer, const FlatSlot& s);

 private:
  std::vector<FlatSlot> slots_;
  std::map<std::string, size_t> index_;
  int64_t numel_ = 0;
};

}  // namespace oar
