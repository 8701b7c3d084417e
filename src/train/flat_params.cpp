#include "train/flat_params.h"

#include "core/error.h"

namespace oar {

const FlatSlot& FlatLayout::add(const std::string& name, const Shape& shape) {
  if (index_.count(name)) throw Error("flat layout: '" + name + "' is already laid out");
  FlatSlot s;
  s.name = name;
  s.shape = shape;
  s.numel = 1;
  for (int64_t d : shape) s.numel *= d;
  constexpr int64_t kAlign = 16;  // floats: 64 bytes
  s.offset = (numel_ + kAlign - 1) / kAlign * kAlign;
  numel_ = s.offset + s.numel;
  index_[name] = slots_.size();
  slots_.push_back(s);
  return slots_.back();
}

const FlatSlot* FlatLayout::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &slots_[it->second];
}

Tensor FlatLayout::allocate(Backend& backend) const { return backend.empty({std::max<int64_t>(numel_, 1)}, DType::F32); }

Tensor FlatLayout::view(const Tensor& buffer, const FlatSlot& s) {
  return buffer.slice0(s.offset, s.offset + s.numel).view(s.shape);
}

}  // namespace oar
