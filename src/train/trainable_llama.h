// A Llama model for training: fp32 master parameters addressable by name, each layer's forward and backward
// side by side (src/train/layers.*), compute in float32, bfloat16 or float16, optional per-layer recompute,
// optional LoRA adapters on the linear layers. Parameters, gradients and optimizer state are keyed by the
// Hugging Face names, so a later parallel layout can shard them and checkpoints can be re-laid out.
//
// Owner of the implementation: the training-core engineer. Users: the trainer (src/train/trainer.*), LoRA I/O
// (src/train/lora.*), the benchmarks.
//
// Semantics pinned down by the implementation (the public methods are unchanged):
//  - Segments are contiguous runs of equal segment_ids within a row: a token attends to the earlier tokens of its
//    own run (a later run reusing an id is a new segment). Empty segment_ids: one segment per row; empty
//    position_ids: 0 .. L-1 per row. Padding (segment -1, label -100) is just another segment, never seen by others.
//  - A micro-batch with no counted token returns loss 0 and adds no gradient (Hugging Face would give NaN).
//  - LossStats is overwritten, not accumulated.
//  - Frozen parameters (after add_lora: everything but the adapters) have an undefined grad (no memory held).
//  - Tied embeddings: parameters() lists model.embed_tokens.weight once; find("lm_head.weight") returns it;
//    export_weights() has no lm_head.weight (as Hugging Face saves tied models).
//  - export_weights() returns host tensors: on the CPU backend views of the live float32 masters (copy them to
//    keep a snapshot), on another backend downloaded copies.
//  - Compute dtypes: F32; BF16 (GEMM operands rounded to bfloat16, oneDNN bf16 x bf16 -> f32 products, fp32
//    accumulation, everything else fp32); F16 emulated the same way with float16 operands (stored as float16, so
//    values beyond 65504 become inf and reach the gradients for the loss scaler to see; products computed exactly
//    in float32 on the widened operands: no speed gain on CPUs, the numerics of fp16 storage + fp32 accumulation).
//    The attention products take their operands (q, k, v, probabilities, gradients) in the compute dtype as well;
//    scores, softmax, norms, SwiGLU, RoPE and the loss are float32 in every mode.
//  - recompute keeps each layer's input only and recomputes the layer inside the backward; the kernels are
//    deterministic, so gradients are bitwise identical to those without it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "data/train_batch.h"
#include "io/weight_source.h"
#include "kernels/backend.h"
#include "train/flat_params.h"

namespace oar {

struct LossStats {
  double loss_sum = 0;      // sum of token losses (nats) over counted tokens
  int64_t tokens = 0;       // counted (label != -100)
  int64_t correct = 0;      // argmax == label among counted tokens
};

struct Parameter {
  std::string name;   // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"; LoRA adds
                      // "model.layers.0.self_attn.q_proj.lora_A.weight" [r, in] and "...lora_B.weight" [out, r]
  Tensor value;       // float32 master copy
  Tensor grad;        // float32, same shape; accumulated by forward_backward; undefined while frozen
  bool trainable = true;
};

// Called during a backward with parameters whose gradients for the micro-batch are complete, in backward order,
// so that a data-parallel trainer can start reducing them while the backward goes on.
using GradsReady = std::function<void(const std::vector<Parameter*>&)>;

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16;  // PaddleNLP: 2 * rank, so scaling alpha / rank = 2
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  uint64_t seed = 42;  // A: Kaiming-uniform(a = sqrt(5)) as PEFT/PaddleNLP; B: zeros
};

struct TrainOptions {
  DType compute = DType::F32;  // F32, BF16 (fp32 master) or F16 (fp32 master, loss scaling by the trainer)
  bool recompute = false;      // keep only layer inputs; recompute each layer's activations in backward
  // Pipeline parallelism: the model is stage `pipeline_stage` of `pipeline_stages` and holds an even share of the
  // layers, the first stage also the embedding and the last the final norm and LM head. Parameter names stay the
  // whole model's ("model.layers.<global index>..."), so checkpoints are re-laid out by name.
  int pipeline_stages = 1, pipeline_stage = 0;
  // Tensor parallelism (train/tensor_parallel.h): the model holds part `tensor_rank` of `tensor_parallel` of each
  // split parameter (whole shapes divided along tensor_split_dim), and set_tensor_group() must give it its group
  // before a pass when tensor_parallel > 1.
  int tensor_parallel = 1, tensor_rank = 0;
};

// What one stage's forward hands on: the output for the next stage, or on the last stage the loss.
struct StageOutput {
  Tensor output;      // [T, C] float32 on the model's backend (a view, valid until the slot is used again); none on the last stage
  double loss = 0;    // the last stage's mean loss over counted tokens (0 when none)
  LossStats stats;    // the last stage's
};

class TrainableLlama {
 public:
  // Random initialisation as Hugging Face/PaddleNLP: normal(0, initializer_range) for matrices and embeddings,
  // ones for norms, zeros for biases.
  // Parameters, gradients and activations live on `backend`, which runs every op.
  static std::unique_ptr<TrainableLlama> random(const LlamaConfig& cfg, const TrainOptions& opt, uint64_t seed,
                                                Backend& backend = cpu_backend());
  static std::unique_ptr<TrainableLlama> from_weights(const LlamaConfig& cfg, const WeightSource& src,
                                                      const TrainOptions& opt, Backend& backend = cpu_backend());
  static std::unique_ptr<TrainableLlama> from_pretrained(const std::string& dir, const TrainOptions& opt,
                                                         Backend& backend = cpu_backend());
  ~TrainableLlama();

  const LlamaConfig& config() const;
  TrainOptions& options();
  std::vector<Parameter*> parameters();  // in a fixed order
  Parameter* find(const std::string& name);

  // Adds LoRA A/B to the target linears; afterwards only LoRA parameters are trainable (base frozen).
  void add_lora(const LoraOptions& lora);
  bool has_lora() const;
  const LoraOptions& lora() const;
  Backend& backend() const;
  // The flat buffers the parameters are views of, addressable by name (layout): the base model, then the LoRA
  // adapters when added. A frozen group has no gradient buffer.
  struct FlatGroup {
    const FlatLayout* layout = nullptr;
    Tensor values, grads;
  };
  std::vector<FlatGroup> flat_groups() const;
  // Sets a parameter's values from a host tensor of its shape (any float dtype; converted to float32).
  void set_value(Parameter& p, const Tensor& host);
  // The same from the whole model's tensor (a checkpoint's): this rank's part of it under tensor parallelism.
  void set_whole_value(Parameter& p, const Tensor& whole);
  Shape whole_shape(const Parameter& p) const;
  // Tensor parallelism: the ranks holding the other parts (host memory; the CPU backend).
  void set_tensor_group(Communicator& group);

  // Forward and backward over one micro-batch. Returns the mean loss over counted tokens. Gradients of
  // (mean loss x grad_scale) are ADDED to Parameter::grad (grad_scale carries 1/accumulation steps and the
  // fp16 loss scale). Frozen parameters get no gradient (and their weight-gradient GEMMs are skipped).
  // `ready` (optional) hears of the trainable parameters in groups as their gradients complete: the LM head and
  // final norm, each layer from the last, the embedding (with a tied head).
  double forward_backward(const TrainBatch& batch, float grad_scale, LossStats* stats = nullptr,
                          const GradsReady& ready = {});
  // The same, one pipeline stage at a time (forward_backward is both on a model of one stage). The forward of
  // micro-batch `b` keeps its activations in `slot` until stage_backward(slot): a pipeline schedule keeps several
  // micro-batches in flight, each in its own slot. `input` is the previous stage's output [T, C] float32 (unused on
  // the first stage). The last stage also runs the loss and its gradient (of mean loss x grad_scale) in the
  // forward. The backward takes the next stage's gradient of this stage's output (unused on the last stage) and
  // returns the gradient of its input (a view, valid until the slot is used again; none on the first stage).
  bool first_stage() const;
  bool last_stage() const;
  // Whether the parameter `name` (Hugging Face name, LoRA included) belongs to this stage: its own layers, the
  // embedding on the first stage, the final norm and LM head on the last (true for a name of no stage, so that
  // looking it up fails). Always true for a whole model.
  bool on_this_stage(const std::string& name) const;
  StageOutput stage_forward(int slot, const TrainBatch& b, const Tensor& input, float grad_scale);
  Tensor stage_backward(int slot, const Tensor& output_grad, const GradsReady& ready = {});
  // Evaluation through one stage: no gradients, no saved activations.
  StageOutput stage_eval(const TrainBatch& b, const Tensor& input);

  // Loss only (evaluation), no gradients, no saved activations.
  double forward_loss(const TrainBatch& batch, LossStats* stats = nullptr);
  // Logits [B*L, V] in host memory (tests, LoRA checks).
  Tensor forward_logits(const TrainBatch& batch);
  void zero_grad();

  // The current weights as a WeightSource with Hugging Face names (LoRA kept separate, not merged), for saving
  // checkpoints (write_safetensors) and building an inference LlamaModel.
  std::vector<std::pair<std::string, Tensor>> export_weights(bool include_lora) const;

  struct Impl;
 private:
  TrainableLlama();
  std::unique_ptr<Impl> impl_;
};

}  // namespace oar
