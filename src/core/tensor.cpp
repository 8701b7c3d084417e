#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

#include "core/error.h"
#include "core/mmap_file.h"

namespace oar {

const char* device_name(Device d) {
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
    case Device::Sim: return "sim";
  }
  return "?";
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  if (device != Device::CPU)
    throw Error(std::string("storage: ") + device_name(device) + " memory comes from its backend (Backend::empty)");
  std::shared_ptr<Storage> s(new Storage());
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  s->data_ = std::aligned_alloc(64, rounded);
  if (!s->data_) throw std::bad_alloc();
  std::memset(s->data_, 0, rounded);
  s->bytes_ = bytes;
  s->device_ = device;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::view(std::shared_ptr<const MappedFile> file, size_t offset, size_t bytes) {
  if (offset > file->size() || bytes > file->size() - offset)
    fail(file->path(), "data range [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) +
                           ") is past the end of the file (" + std::to_string(file->size()) + " bytes)");
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = const_cast<uint8_t*>(file->data()) + offset;
  s->bytes_ = bytes;
  s->owned_ = false;
  s->file_ = std::move(file);
  return s;
}

std::shared_ptr<Storage> Storage::adopt(void* data, size_t bytes, Device device, std::function<void(void*)> release) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->bytes_ = bytes;
  s->device_ = device;
  s->owned_ = true;
  s->release_ = std::move(release);
  return s;
}

Storage::~Storage() {
  if (release_) release_(data_);
  else if (owned_) std::free(data_);
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); i++) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

static Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

static int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) {
    if (d < 0) throw Error("tensor: negative dimension in shape " + shape_str(s));
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.storage_ = Storage::allocate(size_t(numel_of(shape)) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype, size_t byte_offset) {
  size_t need = size_t(numel_of(shape)) * dtype_size(dtype);
  if (byte_offset > storage->bytes() || need > storage->bytes() - byte_offset)
    throw Error("tensor: shape " + shape_str(shape) + " does not fit its storage");
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = byte_offset;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::numel() const { return numel_of(shape_); }

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous()) throw Error("tensor: view of a non-contiguous tensor");
  if (numel_of(shape) != numel()) throw Error("tensor: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  if (shape_.empty() || begin < 0 || end < begin || end > shape_[0]) throw Error("tensor: slice out of range");
  Tensor t = *this;
  t.offset_ += size_t(begin * strides_[0]) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  Tensor t = *this;
  std::swap(t.shape_[size_t(a)], t.shape_[size_t(b)]);
  std::swap(t.strides_[size_t(a)], t.strides_[size_t(b)]);
  return t;
}

static void require_host(const Tensor& t, const char* what) {
  if (t.device() != Device::CPU)
    throw Error(std::string("tensor: ") + what + " reads values on the host, but this tensor is on " +
                device_name(t.device()) + " (download it through its backend first)");
}

float Tensor::item_f32(int64_t flat) const {
  require_host(*this, "item_f32");
  // flat index in logical (row-major) order
  int64_t off = 0;
  for (size_t i = shape_.size(); i-- > 0;) {
    off += (flat % shape_[i]) * strides_[i];
    flat /= shape_[i];
  }
  const uint8_t* p = static_cast<const uint8_t*>(raw()) + size_t(off) * dtype_size(dtype_);
  switch (dtype_) {
    case DType::F32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::BF16: { uint16_t v; std::memcpy(&v, p, 2); return bf16_to_f32(v); }
    case DType::F16: { uint16_t v; std::memcpy(&v, p, 2); return f16_to_f32(v); }
    case DType::I8: return float(*reinterpret_cast<const int8_t*>(p));
    case DType::U8: return float(*p);
    case DType::I32: { int32_t v; std::memcpy(&v, p, 4); return float(v); }
    case DType::I64: { int64_t v; std::memcpy(&v, p, 8); return float(v); }
    default: throw Error(std::string("tensor: item_f32 unsupported for ") + dtype_name(dtype_));
  }
}

Tensor Tensor::contiguous() const { return to(dtype_); }

Tensor Tensor::to(DType dt) const {
  require_host(*this, "to/contiguous");
  Tensor out = Tensor::empty(shape_, dt);
  const int64_t n = numel();
  if (dt == dtype_ && is_contiguous()) {
    std::memcpy(out.raw(), raw(), nbytes());
    return out;
  }
  auto is_float = [](DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; };
  if (!is_float(dt) || !is_float(dtype_)) {
    if (dt != dtype_) throw Error(std::string("tensor: cannot convert ") + dtype_name(dtype_) + " to " + dtype_name(dt));
  }
  if (is_contiguous()) {
    // fast paths for the conversions weight loading uses
    if (dtype_ == DType::BF16 && dt == DType::F32) {
      const uint16_t* s = data<uint16_t>();
      float* d = out.data<float>();
      for (int64_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
      return out;
    }
    if (dtype_ == DType::F16 && dt == DType::F32) {
      const uint16_t* s = data<uint16_t>();
      float* d = out.data<float>();
      for (int64_t i = 0; i < n; i++) d[i] = f16_to_f32(s[i]);
      return out;
    }
    if (dtype_ == DType::F32 && dt == DType::BF16) {
      const float* s = data<float>();
      uint16_t* d = out.data<uint16_t>();
      for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
      return out;
    }
  }
  for (int64_t i = 0; i < n; i++) {
    float v = item_f32(i);
    switch (dt) {
      case DType::F32: out.data<float>()[i] = v; break;
      case DType::BF16: out.data<uint16_t>()[i] = f32_to_bf16(v); break;
      case DType::F16: out.data<uint16_t>()[i] = f32_to_f16(v); break;
      default: {
        // same-type strided copy of an integer tensor
        size_t es = dtype_size(dtype_);
        int64_t off = 0, f = i;
        for (size_t k = shape_.size(); k-- > 0;) {
          off += (f % shape_[k]) * strides_[k];
          f /= shape_[k];
        }
        std::memcpy(static_cast<uint8_t*>(out.raw()) + size_t(i) * es,
                    static_cast<const uint8_t*>(raw()) + size_t(off) * es, es);
      }
    }
  }
  return out;
}

}  // namespace oar
