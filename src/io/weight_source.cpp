#include "io/weight_source.h"

#include "core/error.h"

namespace oar {

Tensor TensorMapSource::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(where_, "missing tensor '" + name + "'");
  return it->second;
}

}  // namespace oar
