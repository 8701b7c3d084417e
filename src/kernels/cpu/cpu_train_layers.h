// The CPU's layer kernels of the training kernel interface (training_kernels.h documents each op): products and
// adds (cpu_train_linear.cpp), the norm, rotary, SwiGLU, embedding and loss kernels (cpu_train_layers.cpp) and
// attention (cpu_train_attention.cpp). CpuTrainKernels (cpu_training_kernels.cpp) forwards to these.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/cpu_train_row_ops.h"
#include "kernels/cpu/isa.h"
#include "kernels/training_kernels.h"

namespace oar::cpu {

// The instruction set the kernels run with: the ISA table chosen at start-up and its row kernels.
struct TrainIsa {
  const IsaOps& isa;
  const RowOps& rows;
};

// ---- cpu_train_linear.cpp ----
void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta);
void convert(const TrainIsa& ti, const Tensor& src, Tensor& dst);
void add(Tensor& x, const Tensor& y);
void add_bias(Tensor& y, const Tensor& bias);
void bias_backward(const Tensor& dy, Tensor& dbias);
void lora_backward(const TrainIsa& ti, const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du,
                   Tensor* dB);

// ---- cpu_train_layers.cpp ----
void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out);
void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable);
void rmsnorm_forward(const TrainIsa& ti, const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const TrainIsa& ti, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw, Tensor* dx_c);
void rope(const TrainIsa& ti, Tensor& x, const int32_t* positions, const RopeTable& tab, bool inverse, Tensor* x_c);
void swiglu_forward(const TrainIsa& ti, const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const TrainIsa& ti, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);
CrossEntropyResult cross_entropy(const TrainIsa& ti, Tensor& logits, const int32_t* labels, float grad_scale,
                                 bool want_grad);
CrossEntropyResult cross_entropy_split(Tensor& logits, const int32_t* labels, int64_t vocab_begin, int64_t vocab_size,
                                       float grad_scale, bool want_grad, const TrainKernels::Combine& combine);

// ---- cpu_train_attention.cpp ----
// What attention keeps between calls: its block size and the buffers of its operands in a 16-bit compute dtype.
struct AttentionState {
  // Query rows per attention block: big enough for efficient products, small enough that the causal triangle
  // wastes little (the last block of each row computes at most this many masked scores per query).
  int64_t query_block;
  std::vector<uint16_t> qc, kc, vc, dc;  // q, k, v, dout in a 16-bit compute dtype
};
// The query block size: 128, or OAR_ATTN_BLOCK (at least 8; for tuning).
int64_t attention_query_block();

void attention_forward(const TrainIsa& ti, AttentionState& st, const AttentionLayout& a, const Tensor& q,
                       const Tensor& k, const Tensor& v, Tensor& out, Tensor& probs);
void attention_backward(const TrainIsa& ti, AttentionState& st, const AttentionLayout& a, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, Tensor& dq,
                        Tensor& dk, Tensor& dv);

}  // namespace oar::cpu
