// The training kernel interface: what a training step needs beyond inference's kernels.h. General matrix products
// (transposed operands, accumulation) for the backward GEMMs, and an explicit backward beside each forward op.
// Layers (src/train/layers.*) call these and nothing lower; each device has one implementation (CPU now, in
// kernels/cpu/cpu_training_kernels.cpp; a CUDA one plugs in behind the same interface).
//
// Activations and gradients are float32. "Compute" tensors, the operands of the matrix products, are float32,
// bfloat16 or float16; elementwise ops that feed a product write their output directly in that dtype (rounded to
// nearest even; float16 overflows to inf, so a too-large loss scale shows up as inf/NaN gradients).
//
// Shapes: T tokens in a step (B rows of L tokens, flattened), C hidden, H query heads, G key/value heads, D head
// size, F MLP width, V vocabulary.
#pragma once
#include <cstdint>
#include <functional>

#include "core/communicator.h"
#include "core/tensor.h"
#include "kernels/kernels.h"

namespace oar {

// Which keys each query sees: causal within its segment. Token t at position i of its row attends to the keys at
// positions [key_begin[t], i] of the same row; key_begin is the start of t's run of equal segment ids, so packed
// examples never see each other (a plain causal row has key_begin 0 everywhere).
struct AttentionLayout {
  int64_t B = 0, L = 0, H = 0, G = 0, D = 0;
  const int32_t* key_begin = nullptr;  // [B*L], positions within the row
  float scale = 0;                     // softmax scale, 1/sqrt(D)
  // dtype of the products' operands (q, k, v, probabilities, gradients rounded to it); scores, softmax and all
  // outputs stay float32.
  DType compute = DType::F32;
};

struct CrossEntropyResult {
  double loss_sum = 0;  // nats, over rows with a label
  int64_t counted = 0;  // rows with label != -100
  int64_t correct = 0;  // argmax == label (first maximum on ties, as torch.argmax)
};

// One AdamW update of a parameter: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
// w = w * decay - step_size * m / (sqrt(v) * inv_bc2_sqrt + eps) (the optimizer folds the bias corrections, the
// learning rate and the decoupled weight decay into these numbers).
struct AdamWUpdate {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float decay = 1.0f, step_size = 0.0f, inv_bc2_sqrt = 1.0f;
};

class TrainKernels {
 public:
  virtual ~TrainKernels() = default;
  virtual const char* name() const = 0;

  // c = alpha * a · b + beta * c. a [M,K] and b [K,N] are 2-D views with one unit stride (a Tensor::transpose view
  // is a transposed operand, no copy), both float32, bfloat16 or float16 (float16 is emulated: converted exactly to
  // float32, float32 product); c is float32 with contiguous rows. With beta 0, c's old contents are ignored.
  // Called from inside a parallel region, the product runs on the calling thread alone.
  virtual void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha = 1.0f, float beta = 0.0f) = 0;

  // dst = src, converted to dst's dtype (float32 -> float32, bfloat16 or float16); same number of elements.
  virtual void convert(const Tensor& src, Tensor& dst) = 0;
  // x += y (float32, same size)
  virtual void add(Tensor& x, const Tensor& y) = 0;
  // y[R, N] += bias[N]; dbias[N] += sum over rows of dy[R, N]
  virtual void add_bias(Tensor& y, const Tensor& bias) = 0;
  virtual void bias_backward(const Tensor& dy, Tensor& dbias) = 0;

  // out[n, C] = table[ids]; ids checked against the table (an oar::Error names the bad id).
  virtual void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) = 0;
  // dtable[ids[t]] += dout[t]
  virtual void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable) = 0;

  // Hugging Face's RMSNorm: y = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps) per row; x [R, C] float32,
  // y [R, C] in any compute dtype, rstd [R] saved for the backward.
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) = 0;
  // dx += dL/dx (the residual stream's gradient accumulates); dw += dL/dw unless dw is null (frozen); dx_c, when
  // given, receives the updated dx in its own dtype (the next backward product's operand, without another pass).
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                                Tensor* dw, Tensor* dx_c = nullptr) = 0;

  // Rotary embedding in place on x [T, heads, D] (float32) at positions[T]; inverse rotates by minus the angle,
  // which is the backward (the rotation is orthogonal). x_c, when given, receives the result in its own dtype.
  virtual void rope(Tensor& x, const int32_t* positions, const RopeTable& table, bool inverse,
                    Tensor* x_c = nullptr) = 0;

  // out = silu(gate) * up; out in any compute dtype.
  virtual void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // dgate, dup from dout, in any compute dtype (they are the operands of the input-gradient products); float32 ones
  // may alias gate and up (read first, element by element).
  virtual void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) = 0;

  // Causal attention with GQA and segment masks. q [T, H, D], k and v [T, G, D] float32 (rows of one sequence
  // contiguous: t = b * L + i), out [T, H, D] in any compute dtype (the next product's operand); the products run
  // in the layout's compute dtype. probs [B, H, L, L] float32 receives the softmax probabilities of the
  // (query, key) blocks the layout needs, for the backward.
  virtual void attention_forward(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v,
                                 Tensor& out, Tensor& probs) = 0;
  // dq, dk, dv (float32, overwritten) from dout and the forward's q, k, v and probs.
  virtual void attention_backward(const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv) = 0;

  // LoRA adapter gradients in one pass over dy [T, out] (compute dtype): du [T, r] = scaling * dy B (float32,
  // overwritten) and, unless dB is null, dB [out, r] += scaling * dy^T u, with u [T, r] and B [out, r] in dy's dtype.
  virtual void lora_backward(const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du,
                             Tensor* dB) = 0;

  // Softmax cross-entropy over logits [R, V] (float32) against labels[R] (-100: not counted; any other value must be
  // in [0, V), else oar::Error). With want_grad, logits are replaced by dloss/dlogits x grad_scale, i.e.
  // (softmax - onehot) * grad_scale on counted rows and 0 on the others; without, logits are left as they are.
  virtual CrossEntropyResult cross_entropy(Tensor& logits, const int32_t* labels, float grad_scale, bool want_grad) = 0;
  // The same over a vocabulary split across ranks (tensor parallelism): logits [R, Vl] are the columns
  // [vocab_begin, vocab_begin + Vl) of the full rows of a `vocab_size` vocabulary; `combine` reduces a host array
  // elementwise over the ranks, every rank giving the same bits back (each rank calls it three times: R, R and 2R
  // values). The loss, counts and this rank's columns of the gradient are the whole vocabulary's.
  using Combine = std::function<void(float* values, int64_t n, ReduceOp op)>;
  virtual CrossEntropyResult cross_entropy_split(Tensor& logits, const int32_t* labels, int64_t vocab_begin,
                                                 int64_t vocab_size, float grad_scale, bool want_grad,
                                                 const Combine& combine) = 0;

  // ---- whole tensors and rows (contiguous operands) ----
  // x = 0, any dtype.
  virtual void zero(Tensor& x) = 0;
  // dst[i] = x[rows[i]] for i < n: x [R, C] and dst [n, C] of one dtype.
  virtual void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst) = 0;
  // dst[rows[i]] = src[i] for i < n: src [n, C] and dst [R, C] of one dtype; other rows of dst are left alone.
  virtual void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst) = 0;

  // ---- the optimizer's ops, on float32 parameters, gradients and moments ----
  virtual void adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWUpdate& u) = 0;
  // total + the sum of x^2, in double: the sums of fixed chunks of 16384 elements are added to total in order, so
  // the bits are the same whatever the thread count (a resumed run clips exactly as the uninterrupted one did).
  virtual double sum_squares(const Tensor& x, double total) = 0;
  virtual void scale(Tensor& x, float s) = 0;
  virtual bool all_finite(const Tensor& x) = 0;
};

// The implementation for a device (throws oar::Error for a device this build cannot run).
TrainKernels& train_kernels_for(Device device);

}  // namespace oar
