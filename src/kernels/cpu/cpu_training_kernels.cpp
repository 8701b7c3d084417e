// The CPU implementation of the training kernels: CpuTrainKernels forwards each op to its free function in
// namespace oar::cpu. Matrix products go through oneDNN's matmul (cpu_train_gemm.*); everything else is plain loops
// written so that the compiler vectorises them (the row kernels, cpu_train_row_ops.*), split over the cores with
// OpenMP (oneDNN shares the same thread pool): products and adds in cpu_train_linear.cpp, norms, rotary, SwiGLU,
// embedding and loss in cpu_train_layers.cpp, attention in cpu_train_attention.cpp, whole-tensor and optimizer ops
// in cpu_tensor_ops.cpp. Splits are static, so every result is the same from run to run; reductions over rows
// (weight gradients of norms and biases, the loss) add per-thread partial sums in thread order.
#include <memory>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_tensor_ops.h"
#include "kernels/cpu/cpu_train_layers.h"
#include "kernels/cpu/cpu_train_row_ops.h"
#include "kernels/cpu/isa.h"
#include "kernels/training_kernels.h"

namespace oar {
namespace {

class CpuTrainKernels final : public TrainKernels {
 public:
  CpuTrainKernels() : isa_(cpu::isa_best()), rows_(cpu::row_ops_for(isa_)), ti_{isa_, rows_} {}
  const char* name() const override { return isa_.name; }

  void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta) override {
    cpu::matmul(a, b, c, alpha, beta);
  }
  void convert(const Tensor& src, Tensor& dst) override { cpu::convert(ti_, src, dst); }
  void add(Tensor& x, const Tensor& y) override { cpu::add(x, y); }
  void add_bias(Tensor& y, const Tensor& bias) override { cpu::add_bias(y, bias); }
  void bias_backward(const Tensor& dy, Tensor& dbias) override { cpu::bias_backward(dy, dbias); }

  void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    cpu::embedding_forward(table, ids, n, out);
  }
  void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable) override {
    cpu::embedding_backward(dout, ids, n, dtable);
  }
  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) override {
    cpu::rmsnorm_forward(ti_, x, w, eps, y, rstd);
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw,
                        Tensor* dx_c) override {
    cpu::rmsnorm_backward(ti_, dy, x, w, rstd, dx, dw, dx_c);
  }
  void rope(Tensor& x, const int32_t* positions, const RopeTable& tab, bool inverse, Tensor* x_c) override {
    cpu::rope(ti_, x, positions, tab, inverse, x_c);
  }
  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override {
    cpu::swiglu_forward(ti_, gate, up, out);
  }
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) override {
    cpu::swiglu_backward(ti_, dout, gate, up, dgate, dup);
  }

  void attention_forward(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                         Tensor& probs) override {
    cpu::attention_forward(ti_, attn_, a, q, k, v, out, probs);
  }
  void attention_backward(const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                          const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv) override {
    cpu::attention_backward(ti_, attn_, a, dout, q, k, v, probs, dq, dk, dv);
  }

  void lora_backward(const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du, Tensor* dB) override {
    cpu::lora_backward(ti_, dy, u, b, scaling, du, dB);
  }

  void zero(Tensor& x) override { cpu::zero(x); }
  void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst) override {
    cpu::gather_rows(x, rows, n, dst);
  }
  void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst) override {
    cpu::scatter_rows(src, rows, n, dst);
  }
  void adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWUpdate& u) override { cpu::adamw(w, g, m, v, u); }
  double sum_squares(const Tensor& x, double total) override { return cpu::sum_squares(x, total); }
  void scale(Tensor& x, float s) override { cpu::scale(x, s); }
  bool all_finite(const Tensor& x) override { return cpu::all_finite(x); }

  CrossEntropyResult cross_entropy(Tensor& logits, const int32_t* labels, float grad_scale, bool want_grad) override {
    return cpu::cross_entropy(ti_, logits, labels, grad_scale, want_grad);
  }
  CrossEntropyResult cross_entropy_split(Tensor& logits, const int32_t* labels, int64_t vocab_begin, int64_t vocab_size,
                                         float grad_scale, bool want_grad, const Combine& combine) override {
    return cpu::cross_entropy_split(logits, labels, vocab_begin, vocab_size, grad_scale, want_grad, combine);
  }

 private:
  const cpu::IsaOps& isa_;
  const cpu::RowOps& rows_;
  const cpu::TrainIsa ti_;
  cpu::AttentionState attn_{cpu::attention_query_block(), {}, {}, {}, {}};
};

}  // namespace

std::unique_ptr<TrainKernels> make_cpu_train_kernels() { return std::make_unique<CpuTrainKernels>(); }

}  // namespace oar
