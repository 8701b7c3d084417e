// Pipeline parallelism (PaddleNLP's pipeline_parallel_degree): the model's layers split evenly over the ranks of a
// pipe group, each rank a stage (TrainOptions::pipeline_stage). A step's micro-batches (gradient_accumulation_steps
// of them) go through the stages in the 1F1B order of Megatron-LM and Paddle's PipelineParallel: a few forwards to
// fill the pipeline, then one forward and one backward in turn, then the remaining backwards. A stage keeps at
// most (stages - stage) micro-batches' activations. Gradients are those of running the micro-batches one after
// the other on one process.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/communicator.h"
#include "core/tensor.h"
#include "data/train_batch.h"
#include "train/trainable_llama.h"

namespace oar {

// One step of a stage's program: a forward or backward of a micro-batch, or an exchange with the neighbouring
// stages that sends and receives at once (one of each at most; -1: none).
struct PipeAction {
  enum Kind { Forward, Backward, Exchange } kind = Exchange;
  int micro = -1;          // Forward / Backward
  int send_forward = -1;   // Exchange: this micro-batch's output goes to the next stage
  int recv_forward = -1;   //           the previous stage's output of this micro-batch arrives
  int send_backward = -1;  //           this micro-batch's input gradient goes to the previous stage
  int recv_backward = -1;  //           the next stage's gradient of this micro-batch arrives
};

// The 1F1B program of `stage` of `stages` for `micro` micro-batches: every forward and backward once, backwards
// in forward order, and exchanges that pair with the neighbours' so that blocking sends cannot deadlock.
std::vector<PipeAction> one_f_one_b(int stages, int stage, int micro);

// The stage of `model` on this rank of `pipe` (pipe rank = stage).
class PipelineStage {
 public:
  PipelineStage(TrainableLlama& model, Communicator& pipe);

  // Forward and backward of one step's micro-batches, gradients added as TrainableLlama::forward_backward adds
  // them. Returns each micro-batch's mean loss on the last stage (zeros elsewhere). `last_ready` hears of the
  // last micro-batch's gradients as they complete on the first stage (which sends nothing after them), on the
  // others once the stage has sent its last message, so that the caller can sum them on another communicator
  // while the other stages finish.
  std::vector<double> train_step(const std::vector<TrainBatch>& batches, float grad_scale, const GradsReady& last_ready);
  // Evaluation of one batch through the stages: every stage returns the last stage's loss and stats.
  double eval(const TrainBatch& b, LossStats* stats);

 private:
  void exchange(const PipeAction& a, const std::vector<TrainBatch>& batches);
  Tensor& buffer(Tensor& t, int64_t rows);

  TrainableLlama& model_;
  Communicator& pipe_;
  Tensor out_act_, out_grad_;  // views of the model's slot buffers, sent right after the compute that made them
  Tensor in_act_, in_grad_;    // receive buffers
};

// Every stage's tensors on pipe rank 0, in stage order (the whole model's order for parameters); the other ranks
// get an empty list. Every rank of `pipe` must call it.
std::vector<std::pair<std::string, Tensor>> gather_stages(Communicator& pipe,
                                                          const std::vector<std::pair<std::string, Tensor>>& mine);

}  // namespace oar
