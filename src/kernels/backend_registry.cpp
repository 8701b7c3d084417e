// The backend registry: a name and a factory per backend. Adding a device is a folder under kernels/ and a line
// here.
#include <map>
#include <mutex>

#include "core/error.h"
#include "kernels/backend.h"

namespace oar {
namespace {

struct Entry {
  const char* name;
  std::unique_ptr<Backend> (*make)(std::shared_ptr<Communicator>);
};

const Entry kBackends[] = {
    {"cpu", make_cpu_backend},
    {"sim", make_sim_backend},  // tests: memory the host cannot read (kernels/sim/)
};

}  // namespace

std::vector<std::string> backend_names() {
  std::vector<std::string> names;
  for (const Entry& e : kBackends) names.push_back(e.name);
  return names;
}

std::unique_ptr<Backend> make_backend(const std::string& name, std::shared_ptr<Communicator> comm) {
  if (!comm) comm = make_single_process_communicator();
  for (const Entry& e : kBackends)
    if (name == e.name) return e.make(std::move(comm));
  std::string known;
  for (const Entry& e : kBackends) known += std::string(known.empty() ? "" : ", ") + e.name;
  throw Error("unknown backend '" + name + "' (this build has: " + known + ")");
}

Backend& backend(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Backend>> shared;
  std::lock_guard<std::mutex> lock(mu);
  auto& b = shared[name];
  if (!b) b = make_backend(name);
  return *b;
}

Backend& cpu_backend() {
  static Backend& b = backend("cpu");
  return b;
}

Backend& backend_for(Device device) {
  if (device == Device::CPU) return cpu_backend();
  if (device == Device::Sim) return backend("sim");
  throw Error(std::string("this build of oar has no backend for device ") + device_name(device));
}

Kernels& kernels_for(Device device) {
  if (device == Device::CPU) return cpu_backend().ops();
  throw Error(std::string("this build of oar has no kernels for device ") + device_name(device) +
              " outside its backend (make_backend)");
}

TrainKernels& train_kernels_for(Device device) {
  if (device == Device::CPU) return cpu_backend().train_ops();
  throw Error(std::string("this build of oar has no training kernels for device ") + device_name(device) +
              " outside its backend (make_backend)");
}

}  // namespace oar
