// The CPU backend: host memory, the CPU kernels. Uploads and downloads are the tensors themselves (no copies), so
// code written against the Backend costs nothing on the CPU.
#include <cstring>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace oar {
namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(std::shared_ptr<Communicator> comm)
      : kernels_(make_cpu_kernels()), train_kernels_(make_cpu_train_kernels()), comm_(std::move(comm)) {}
  const char* name() const override { return "cpu"; }
  Device device() const override { return Device::CPU; }

  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  Tensor upload(const Tensor& host) override {
    require_host(host, "upload");
    return host.is_contiguous() ? host : host.contiguous();
  }
  Tensor download(const Tensor& t) override {
    require_host(t, "download");
    return t;
  }
  void copy(const Tensor& src, Tensor& dst) override {
    check_copy(src, dst);
    if (src.raw() != dst.raw()) std::memmove(dst.raw(), src.raw(), src.nbytes());
  }

  Kernels& ops() override { return *kernels_; }
  TrainKernels& train_ops() override { return *train_kernels_; }
  Communicator& communicator() override { return *comm_; }
  void synchronize() override {}

 private:
  static void require_host(const Tensor& t, const char* what) {
    if (t.device() != Device::CPU)
      throw Error(std::string("cpu backend: ") + what + " of a tensor on " + device_name(t.device()));
  }
  std::unique_ptr<Kernels> kernels_;
  std::unique_ptr<TrainKernels> train_kernels_;
  std::shared_ptr<Communicator> comm_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<Communicator> comm) {
  return std::make_unique<CpuBackend>(std::move(comm));
}

}  // namespace oar
