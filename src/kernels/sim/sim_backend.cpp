// The `sim` backend: a device whose memory the host cannot read. Every allocation is its own anonymous mapping,
// kept PROT_NONE except while one of this backend's calls runs (an op, a copy, an upload or a download), so host
// code that touches a sim tensor directly faults. Inside a call the CPU kernels do the work, so results are
// bit-identical to the CPU backend's: what the tests learn is that the layers above reach memory only through
// the Backend, which is what a CUDA backend needs of them. The opening is process-wide: while one thread is inside
// a sim call, every thread may touch sim memory, so the checks prove host-access freedom for code that does not
// read device memory concurrently with another thread's op (all of oar's model, engine and training code).
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace oar {
namespace {

// All sim mappings of the process, and how many backend calls are open (calls nest and may run on two threads).
class SimMemory {
 public:
  static SimMemory& get() {
    static SimMemory* m = new SimMemory();  // never destroyed: tensors in static objects may outlive it
    return *m;
  }
  void* allocate(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t len = round_up(bytes);
    void* p = mmap(nullptr, len, open_ ? PROT_READ | PROT_WRITE : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error("sim backend: cannot map " + std::to_string(len) + " bytes: " + std::strerror(errno));
    try {
      regions_[p] = len;
    } catch (...) {
      munmap(p, len);
      throw;
    }
    return p;
  }
  void release(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = regions_.find(p);
    if (it == regions_.end()) return;
    munmap(p, it->second);
    regions_.erase(it);
  }
  // A failed opening closes again and throws, leaving the count as it was.
  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (open_ == 0 && !protect(PROT_READ | PROT_WRITE)) {
      const int err = errno;
      protect(PROT_NONE);
      throw Error(std::string("sim backend: mprotect failed: ") + std::strerror(err));
    }
    open_++;
  }
  // Whether p lies in a sim mapping (checks the raw pointers of a KVLayerView).
  bool contains(const void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto* c = static_cast<const uint8_t*>(p);
    for (auto& [base, len] : regions_)
      if (c >= static_cast<const uint8_t*>(base) && c < static_cast<const uint8_t*>(base) + len) return true;
    return false;
  }
  // Runs in destructors: a memory that cannot be closed again ends the process rather than the checks.
  void leave() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    if (--open_ == 0 && !protect(PROT_NONE)) {
      std::fprintf(stderr, "sim backend: mprotect(PROT_NONE) failed: %s\n", std::strerror(errno));
      std::abort();
    }
  }

 private:
  static size_t round_up(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return std::max<size_t>(1, (bytes + page - 1) / page) * page;
  }
  bool protect(int prot) {
    bool ok = true;
    for (auto& [p, len] : regions_) ok = mprotect(p, len, prot) == 0 && ok;
    return ok;
  }
  std::mutex mu_;
  std::unordered_map<void*, size_t> regions_;
  int open_ = 0;
};

// Every tensor an op is given must live on the sim device, as a GPU's kernels would need (null and undefined
// ones are optional arguments left out).
void require_on_sim(std::initializer_list<const Tensor*> operands) {
  for (const Tensor* t : operands)
    if (t && t->defined() && t->device() != Device::Sim)
      throw Error(std::string("sim backend: an operand is in ") + device_name(t->device()) +
                  " memory (upload it through the backend)");
}

// Opens sim memory to the host for the extent of one backend call, after checking its operands.
struct Open {
  explicit Open(std::initializer_list<const Tensor*> operands = {}) {
    require_on_sim(operands);
    SimMemory::get().enter();
  }
  ~Open() { SimMemory::get().leave(); }
  Open(const Open&) = delete;
  Open& operator=(const Open&) = delete;
};

void require_sim(const KVLayerView& c) {
  for (const void* p : {static_cast<const void*>(c.k), static_cast<const void*>(c.v), static_cast<const void*>(c.k8),
                        static_cast<const void*>(c.v8), static_cast<const void*>(c.k_scale),
                        static_cast<const void*>(c.v_scale)})
    if (p && !SimMemory::get().contains(p)) throw Error("sim backend: a KV cache layer is not in sim memory");
}

class SimKernels final : public Kernels {
 public:
  explicit SimKernels(std::unique_ptr<Kernels> cpu) : cpu_(std::move(cpu)) {}
  const char* name() const override { return "sim"; }
  void linear(const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y) override {
    Open o{&x, &w.data, &w.scales, &w.zero_points, &w.row_sums, bias, &y};
    cpu_->linear(x, w, bias, y);
  }
  void linear_multi(const Tensor& x, const std::vector<const Weight*>& ws, const std::vector<const Tensor*>& biases,
                    const std::vector<Tensor*>& ys) override {
    for (size_t i = 0; i < ws.size(); i++)
      require_on_sim({&ws[i]->data, &ws[i]->scales, &ws[i]->zero_points, &ws[i]->row_sums,
                      i < biases.size() ? biases[i] : nullptr, i < ys.size() ? ys[i] : nullptr});
    Open o{&x};
    cpu_->linear_multi(x, ws, biases, ys);
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    Open o{&x, &w, &y};
    cpu_->rmsnorm(x, w, eps, y);
  }
  void rope(Tensor& x, const int32_t* positions, const RopeTable& table) override {
    Open o{&x};
    cpu_->rope(x, positions, table);
  }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    Open o{&gate, &up, &out};
    cpu_->swiglu(gate, up, out);
  }
  void linear_swiglu(const Tensor& x, const Weight& w_gate, const Weight& w_up, Tensor& gate, Tensor& up) override {
    Open o{&x,          &w_gate.data, &w_gate.scales, &w_gate.zero_points, &w_gate.row_sums, &w_up.data,
           &w_up.scales, &w_up.zero_points, &w_up.row_sums, &gate, &up};
    cpu_->linear_swiglu(x, w_gate, w_up, gate, up);
  }
  void softmax(Tensor& x) override {
    Open o{&x};
    cpu_->softmax(x);
  }
  void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    Open o{&table, &out};
    cpu_->embedding(table, ids, n, out);
  }
  void add_inplace(Tensor& x, const Tensor& y) override {
    Open o{&x, &y};
    cpu_->add_inplace(x, y);
  }
  void kv_write(const KVLayerView& cache, const Tensor& k, const Tensor& v, const std::vector<SeqSlice>& seqs) override {
    Open o{&k, &v};
    require_sim(cache);
    cpu_->kv_write(cache, k, v, seqs);
  }
  void attention(const Tensor& q, const KVLayerView& cache, const std::vector<SeqSlice>& seqs, Tensor& out) override {
    Open o{&q, &out};
    require_sim(cache);
    cpu_->attention(q, cache, seqs, out);
  }

 private:
  std::unique_ptr<Kernels> cpu_;
};

class SimTrainKernels final : public TrainKernels {
 public:
  explicit SimTrainKernels(std::unique_ptr<TrainKernels> cpu) : cpu_(std::move(cpu)) {}
  const char* name() const override { return "sim"; }
  void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta) override {
    Open o{&a, &b, &c};
    cpu_->matmul(a, b, c, alpha, beta);
  }
  void convert(const Tensor& src, Tensor& dst) override {
    Open o{&src, &dst};
    cpu_->convert(src, dst);
  }
  void add(Tensor& x, const Tensor& y) override {
    Open o{&x, &y};
    cpu_->add(x, y);
  }
  void add_bias(Tensor& y, const Tensor& bias) override {
    Open o{&y, &bias};
    cpu_->add_bias(y, bias);
  }
  void bias_backward(const Tensor& dy, Tensor& dbias) override {
    Open o{&dy, &dbias};
    cpu_->bias_backward(dy, dbias);
  }
  void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    Open o{&table, &out};
    cpu_->embedding_forward(table, ids, n, out);
  }
  void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable) override {
    Open o{&dout, &dtable};
    cpu_->embedding_backward(dout, ids, n, dtable);
  }
  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) override {
    Open o{&x, &w, &y, &rstd};
    cpu_->rmsnorm_forward(x, w, eps, y, rstd);
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw,
                        Tensor* dx_c) override {
    Open o{&dy, &x, &w, &rstd, &dx, dw, dx_c};
    cpu_->rmsnorm_backward(dy, x, w, rstd, dx, dw, dx_c);
  }
  void rope(Tensor& x, const int32_t* positions, const RopeTable& table, bool inverse, Tensor* x_c) override {
    Open o{&x, x_c};
    cpu_->rope(x, positions, table, inverse, x_c);
  }
  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override {
    Open o{&gate, &up, &out};
    cpu_->swiglu_forward(gate, up, out);
  }
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) override {
    Open o{&dout, &gate, &up, &dgate, &dup};
    cpu_->swiglu_backward(dout, gate, up, dgate, dup);
  }
  void attention_forward(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                         Tensor& probs) override {
    Open o{&q, &k, &v, &out, &probs};
    cpu_->attention_forward(a, q, k, v, out, probs);
  }
  void attention_backward(const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                          const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv) override {
    Open o{&dout, &q, &k, &v, &probs, &dq, &dk, &dv};
    cpu_->attention_backward(a, dout, q, k, v, probs, dq, dk, dv);
  }
  void lora_backward(const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du,
                     Tensor* dB) override {
    Open o{&dy, &u, &b, &du, dB};
    cpu_->lora_backward(dy, u, b, scaling, du, dB);
  }
  void zero(Tensor& x) override {
    Open o{&x};
    cpu_->zero(x);
  }
  void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst) override {
    Open o{&x, &dst};
    cpu_->gather_rows(x, rows, n, dst);
  }
  void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst) override {
    Open o{&src, &dst};
    cpu_->scatter_rows(src, rows, n, dst);
  }
  void adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWUpdate& u) override {
    Open o{&w, &g, &m, &v};
    cpu_->adamw(w, g, m, v, u);
  }
  double sum_squares(const Tensor& x, double total) override {
    Open o{&x};
    return cpu_->sum_squares(x, total);
  }
  void scale(Tensor& x, float s) override {
    Open o{&x};
    cpu_->scale(x, s);
  }
  bool all_finite(const Tensor& x) override {
    Open o{&x};
    return cpu_->all_finite(x);
  }
  CrossEntropyResult cross_entropy(Tensor& logits, const int32_t* labels, float grad_scale, bool want_grad) override {
    Open o{&logits};
    return cpu_->cross_entropy(logits, labels, grad_scale, want_grad);
  }
  CrossEntropyResult cross_entropy_split(Tensor& logits, const int32_t* labels, int64_t vocab_begin, int64_t vocab_size,
                                         float grad_scale, bool want_grad, const Combine& combine) override {
    Open o{&logits};
    return cpu_->cross_entropy_split(logits, labels, vocab_begin, vocab_size, grad_scale, want_grad, combine);
  }

 private:
  std::unique_ptr<TrainKernels> cpu_;
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(std::shared_ptr<Communicator> comm)
      : kernels_(make_cpu_kernels()), train_kernels_(make_cpu_train_kernels()), comm_(std::move(comm)) {}
  const char* name() const override { return "sim"; }
  Device device() const override { return Device::Sim; }

  Tensor empty(const Shape& shape, DType dtype) override {
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) throw Error("sim backend: negative dimension in shape " + shape_str(shape));
      n *= d;
    }
    const size_t bytes = size_t(n) * dtype_size(dtype);
    void* p = SimMemory::get().allocate(bytes);  // anonymous mappings start zero-filled
    auto storage = Storage::adopt(p, bytes, Device::Sim, [](void* q) { SimMemory::get().release(q); });
    return Tensor::from_storage(std::move(storage), shape, dtype);
  }
  Tensor upload(const Tensor& host) override {
    if (host.device() != Device::CPU) throw Error("sim backend: upload of a tensor that is not in host memory");
    const Tensor src = host.is_contiguous() ? host : host.contiguous();
    Tensor t = empty(src.shape(), src.dtype());
    Open o;
    std::memcpy(t.raw(), src.raw(), src.nbytes());
    return t;
  }
  Tensor download(const Tensor& t) override {
    require_sim(t, "download");
    if (!t.is_contiguous()) throw Error("sim backend: download of a non-contiguous tensor");
    Tensor host = Tensor::empty(t.shape(), t.dtype());
    Open o;
    std::memcpy(host.raw(), t.raw(), t.nbytes());
    return host;
  }
  void copy(const Tensor& src, Tensor& dst) override {
    check_copy(src, dst);
    Open o;
    std::memmove(dst.raw(), src.raw(), src.nbytes());
  }

  Kernels& ops() override { return kernels_; }
  TrainKernels& train_ops() override { return train_kernels_; }
  Communicator& communicator() override { return *comm_; }
  void synchronize() override {}

 private:
  static void require_sim(const Tensor& t, const char* what) {
    if (t.device() != Device::Sim)
      throw Error(std::string("sim backend: ") + what + " of a tensor on " + device_name(t.device()));
  }
  SimKernels kernels_;
  SimTrainKernels train_kernels_;
  std::shared_ptr<Communicator> comm_;
};

}  // namespace

std::unique_ptr<Backend> make_sim_backend(std::shared_ptr<Communicator> comm) {
  return std::make_unique<SimBackend>(std::move(comm));
}

}  // namespace oar
