// A Backend is one device as the layers above see it: its memory (empty, upload, download, copy), its op set
// (the inference ops of kernels.h and the training ops of training_kernels.h, whose forward ops sit beside their
// backward ones), the Communicator of the ranks it works with, and synchronize. Models, caches and engines hold a
// Backend and reach tensor memory only through it, so a device whose memory the host cannot read (CUDA; the `sim`
// test device) runs the same code.
//
// Backends come from a registry by name ("cpu", "sim"). Each instance owns its kernels' scratch buffers, so two
// instances (two ranks of a thread group, two models) can run at the same time.
//
// Host-side metadata (token ids, positions, block tables, the RoPE table, labels) stays in host memory and is
// passed to the ops as host pointers: moving it to the device, where that is needed, is the backend's business.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "core/tensor.h"
#include "kernels/kernels.h"
#include "kernels/training_kernels.h"
#include "kernels/weight.h"

namespace oar {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual Device device() const = 0;

  // A new zero-filled, contiguous tensor on this device.
  virtual Tensor empty(const Shape& shape, DType dtype) = 0;
  // A tensor on this device with a host tensor's values (contiguous). The CPU backend returns `host` itself: a
  // weight mapped from a file stays a zero-copy view.
  virtual Tensor upload(const Tensor& host) = 0;
  // A host tensor with the values of a tensor on this device (the CPU backend returns `t` itself, no copy).
  virtual Tensor download(const Tensor& t) = 0;
  // dst = src: both contiguous, on this device, of one dtype and element count.
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // A [out, in] host matrix (float32, bfloat16 or float16) as a weight of `format` on this device, ready for
  // Kernels::linear. The default converts (or quantizes) on the host and uploads (on the CPU a matrix already in
  // the format stays a zero-copy view of its file).
  // spec: the format (and an Int4 group size).
  virtual Weight pack_weight(const Tensor& host, const QuantSpec& spec);
  Weight pack_weight(const Tensor& host, WeightFormat format) { return pack_weight(host, QuantSpec{format, -1}); }
  // A weight already in its format on the host (data, scales and zero points) on this device.
  Weight upload_weight(Weight host);

  virtual Kernels& ops() = 0;
  virtual TrainKernels& train_ops() = 0;
  virtual Communicator& communicator() = 0;
  // Returns when every op issued so far has finished (the CPU's ops finish before they return).
  virtual void synchronize() = 0;

 protected:
  // What every copy() requires of its operands (throws oar::Error naming the backend).
  void check_copy(const Tensor& src, const Tensor& dst) const;
};

// A new instance of the named backend, working with the ranks of `comm` (null: a single process).
// Throws oar::Error naming the known backends for an unknown name.
std::unique_ptr<Backend> make_backend(const std::string& name, std::shared_ptr<Communicator> comm = nullptr);
// The process's shared instance of a backend (made on first use).
Backend& backend(const std::string& name);
Backend& cpu_backend();
// The shared instance for a device (a tensor's device names the backend whose ops may touch it).
Backend& backend_for(Device device);
std::vector<std::string> backend_names();

// The registry's entries: one line per backend in kernels/backend_registry.cpp.
std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<Communicator> comm);
std::unique_ptr<Backend> make_sim_backend(std::shared_ptr<Communicator> comm);

}  // namespace oar
