// Tensor: a typed, shaped, strided view of storage on a device. Storage is either an owned aligned buffer
// or a view into a memory-mapped file (the file stays mapped as long as any tensor refers to it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace oar {

class MappedFile;

// Where a tensor's memory lives. Host code may read only CPU memory; the rest is reached through its device's
// Backend (kernels/backend.h). Sim is the test device whose memory faults when host code touches it.
enum class Device : uint8_t { CPU, CUDA, Sim };
const char* device_name(Device d);

class Storage {
 public:
  // Owned, zero-initialised, 64-byte aligned (one cache line, one AVX-512 register).
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device = Device::CPU);
  // Memory a backend allocated on its device; `release` frees it when the last tensor lets go.
  static std::shared_ptr<Storage> adopt(void* data, size_t bytes, Device device, std::function<void(void*)> release);
  // A read-only view of [offset, offset+bytes) of a mapped file.
  static std::shared_ptr<Storage> view(std::shared_ptr<const MappedFile> file, size_t offset, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool owned() const { return owned_; }
  bool writable() const { return owned_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::CPU;
  bool owned_ = false;
  std::shared_ptr<const MappedFile> file_;  // keeps the mapping alive for views
  std::function<void(void*)> release_;      // adopted device memory
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"

class Tensor {
 public:
  Tensor() = default;
  // New owned, contiguous, zero-filled host tensor (other devices: Backend::empty).
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  // Contiguous tensor over existing storage (e.g. a file view); checks that it fits.
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype, size_t byte_offset = 0);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t dim(int i) const { return shape_[size_t(i < 0 ? int(shape_.size()) + i : i)]; }
  int ndim() const { return int(shape_.size()); }
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  template <class T> T* data() { return reinterpret_cast<T*>(raw()); }
  template <class T> const T* data() const { return reinterpret_cast<const T*>(raw()); }
  void* raw() { return static_cast<uint8_t*>(storage_->data()) + offset_; }
  const void* raw() const { return static_cast<const uint8_t*>(storage_->data()) + offset_; }

  // Views sharing storage.
  Tensor view(const Shape& shape) const;         // contiguous reshape
  Tensor slice0(int64_t begin, int64_t end) const;  // rows [begin, end) of the first dimension
  Tensor transpose(int a, int b) const;          // swaps two dims' shape and strides (no copy)

  // Copy to a new contiguous host tensor of another dtype (float types only, and same-type copies). These three
  // read the values on the host: for another device they throw (Backend::download first).
  Tensor to(DType dtype) const;
  Tensor contiguous() const;
  // Element as float (for tests and small reductions; slow).
  float item_f32(int64_t flat_index) const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_, strides_;
  DType dtype_ = DType::F32;
};

}  // namespace oar
