// The layers of a Llama, each forward beside its backward (in the spirit of llm.c): embedding, RMSNorm, linear with
// optional bias and LoRA, RoPE, causal attention with GQA and segment masks, SwiGLU, and the LM head fused with the
// cross-entropy loss. TrainableLlama (trainable_llama.cpp) composes them into decoder layers.
//
// Conventions. Activations and gradients are float32; the operands of matrix products are in the compute dtype
// (float32, bfloat16 or float16: see training_kernels.h), so a layer that feeds a product writes that dtype and a
// backward that needs dy as an operand takes both dy (float32) and dy_c (its compute-dtype copy, the same tensor in
// float32 mode). Backwards ADD into parameter gradients and skip the ones of frozen parameters; the gradient
// flowing to a layer's input is overwritten or added as each function says.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/training_kernels.h"
#include "train/trainable_llama.h"

namespace oar::layers {

// Reusable scratch tensors by name: a buffer grows when a larger shape is asked for and is never freed, so steps of
// one shape allocate nothing. Views it returns stay valid until the same name is asked for with a larger size.
// The buffers live on the backend's device.
class Workspace {
 public:
  explicit Workspace(Backend& backend) : be_(&backend) {}
  Tensor get(const std::string& name, const Shape& shape, DType dtype);

 private:
  Backend* be_;
  std::map<std::string, std::shared_ptr<Storage>> bufs_;
};

// What every layer needs: the backend (memory) and its training ops, the compute dtype and scratch space.
struct Ctx {
  Backend& be;
  TrainKernels& K;
  DType cdt;
  Workspace& ws;
  // x in the compute dtype: x itself in float32 mode, else a converted copy in the scratch buffer `name`.
  Tensor compute_copy(const Tensor& x, const std::string& name);
};

// ---- embedding: x[t] = table[ids[t]] ----
void embedding_forward(Ctx& c, const Parameter& table, const std::vector<int32_t>& ids, Tensor& x);
// table.grad[ids[t]] += dx[t] (nothing when frozen)
void embedding_backward(Ctx& c, Parameter& table, const std::vector<int32_t>& ids, const Tensor& dx);

// ---- RMSNorm: y = w * x / sqrt(mean(x^2) + eps); y in the compute dtype, rstd [R] saved ----
void rmsnorm_forward(Ctx& c, const Parameter& w, float eps, const Tensor& x, Tensor& y, Tensor& rstd);
// dx += dL/dx; w.grad += dL/dw unless frozen; dx_c (optional) receives the updated dx in the compute dtype.
void rmsnorm_backward(Ctx& c, Parameter& w, const Tensor& x, const Tensor& rstd, const Tensor& dy, Tensor& dx,
                      Tensor* dx_c = nullptr);

// ---- linear: y = x W^T (+ bias) (+ scaling * (x A^T) B^T with LoRA) ----
struct Linear {
  Parameter* weight = nullptr;  // [out, in]
  Parameter* bias = nullptr;    // [out], or null
  Parameter* lora_a = nullptr;  // [r, in], or null
  Parameter* lora_b = nullptr;  // [out, r]
  float scaling = 0;            // alpha / r
  // The product operands in the compute dtype: views of the master weights in float32 mode, converted copies
  // otherwise (refreshed by prepare() before each pass, since the optimizer changes the masters in place). With
  // LoRA, w is the merged W + scaling * B A (float32 in `merged`), so y = x w^T and dx = dy w carry the adapter's
  // part and only the adapter's gradients need products of their own.
  Tensor w, a, b, merged;

  int64_t in() const { return weight->value.dim(1); }
  int64_t out() const { return weight->value.dim(0); }
  bool has_lora() const { return lora_a != nullptr; }
  int64_t rank() const { return lora_a ? lora_a->value.dim(0) : 0; }
  void prepare(Ctx& c);
};
// y [T, out] (float32) = x [T, in] (compute dtype) W^T ..., or y += ... with accumulate. With LoRA, u [T, r]
// (compute dtype) receives x A^T, which the backward needs for dB.
void linear_forward(Ctx& c, const Linear& lin, const Tensor& x, Tensor& y, Tensor* u, bool accumulate = false);
// From dy [T, out] (and dy_c; dy itself is read only for a bias gradient, so without a bias it may be dy_c): W.grad += dy^T x, bias.grad += sum dy, LoRA A/B grads; dx [T, in] = dy W (+ the LoRA
// path), overwritten or added (dx_accumulate); dx may be null when nobody needs it.
void linear_backward(Ctx& c, Linear& lin, const Tensor& x, const Tensor* u, const Tensor& dy, const Tensor& dy_c,
                     Tensor* dx, bool dx_accumulate);

// ---- RoPE on q or k [T, heads, D], in place; the backward rotates the gradient back ----
void rope_forward(Ctx& c, Tensor& x, const std::vector<int32_t>& positions, const RopeTable& table);
// dx_c (optional) receives the rotated gradient in the compute dtype.
void rope_backward(Ctx& c, Tensor& dx, const std::vector<int32_t>& positions, const RopeTable& table,
                   Tensor* dx_c = nullptr);

// ---- causal attention with GQA and segment masks (layout in training_kernels.h) ----
// q [T, H*D], k/v [T, G*D] float32; out [T, H*D] in the compute dtype; probs [B, H, L, L] saved for the backward.
void attention_forward(Ctx& c, const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                       Tensor& probs);
// dq, dk, dv overwritten.
void attention_backward(Ctx& c, const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv);

// ---- SwiGLU: act = silu(gate) * up, act in the compute dtype ----
void swiglu_forward(Ctx& c, const Tensor& gate, const Tensor& up, Tensor& act);
// dgate, dup: dL/dgate and dL/dup in the compute dtype; in float32 mode they may be gate and up themselves (the saved
// activations are used up by their backward).
void swiglu_backward(Ctx& c, const Tensor& dact, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);

// ---- LM head + cross-entropy: loss = mean over counted tokens of -log softmax(x W^T)[label] ----
// x [T, C] compute dtype (the final norm's output), labels [T] with -100 for tokens not counted. Only counted rows
// go through the head, in chunks, so the [T, V] logits never exist at once. With dx non-null, the gradients of
// (mean loss x grad_scale) are formed: dx [T, C] overwritten (zero on rows not counted) and head.grad added
// (unless frozen). No counted token: loss 0 and no gradient.
// With `split` (tensor parallelism), the head holds this rank's rows of the vocabulary (vocab-parallel) and the
// cross-entropy combines the ranks' parts (TrainKernels::cross_entropy_split); dx is summed over the ranks.
struct VocabSplit {
  int64_t begin = 0, vocab_size = 0;  // this rank's first row of the LM head; the whole vocabulary
  TrainKernels::Combine combine;      // host values over the ranks
  std::function<void(Tensor&)> sum;   // a float32 tensor summed over the ranks, the same bits on each
};
CrossEntropyResult lm_head_loss(Ctx& c, Linear& head, const Tensor& x, const std::vector<int32_t>& labels,
                                float grad_scale, Tensor* dx, const VocabSplit* split = nullptr);
// logits [T, V] of every row (tests, evaluation of generations).
void lm_head_logits(Ctx& c, const Linear& head, const Tensor& x, Tensor& logits);

}  // namespace oar::layers
