#include "train/pipeline.h"

#include <algorithm>
#include <cstdint>

#include "core/error.h"

namespace oar {

std::vector<PipeAction> one_f_one_b(int stages, int stage, int micro) {
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<PipeAction> prog;
  auto compute = [&](PipeAction::Kind k, int i) { prog.push_back(PipeAction{k, i}); };
  auto exchange = [&](int send_fwd, int recv_fwd, int send_bwd, int recv_bwd) {
    PipeAction a;
    a.send_forward = last ? -1 : send_fwd;
    a.recv_forward = first ? -1 : recv_fwd;
    a.send_backward = first ? -1 : send_bwd;
    a.recv_backward = last ? -1 : recv_bwd;
    if (a.send_forward >= 0 || a.recv_forward >= 0 || a.send_backward >= 0 || a.recv_backward >= 0) prog.push_back(a);
  };
  // Warm-up: the forwards that fill the pipeline below this stage.
  const int warmup = std::min(stages - stage - 1, micro), steady = micro - warmup;
  for (int i = 0; i < warmup; i++) {
    exchange(-1, i, -1, -1);
    compute(PipeAction::Forward, i);
    exchange(i, -1, -1, -1);
  }
  // Steady state: forward of micro-batch warmup + k, backward of k; the output goes down as the gradient comes up.
  if (steady > 0) exchange(-1, warmup, -1, -1);
  for (int k = 0; k < steady; k++) {
    const int f = warmup + k;
    compute(PipeAction::Forward, f);
    exchange(f, -1, -1, k);
    compute(PipeAction::Backward, k);
    exchange(-1, k + 1 < steady ? f + 1 : -1, k, -1);
  }
  // Cool-down: the remaining backwards.
  for (int b = steady; b < micro; b++) {
    exchange(-1, -1, -1, b);
    compute(PipeAction::Backward, b);
    exchange(-1, -1, b, -1);
  }
  return prog;
}

PipelineStage::PipelineStage(TrainableLlama& model, Communicator& pipe) : model_(model), pipe_(pipe) {
  const TrainOptions& o = model.options();
  if (o.pipeline_stages != pipe.size() || o.pipeline_stage != pipe.rank())
    throw Error("pipeline: the model is stage " + std::to_string(o.pipeline_stage) + " of " +
                std::to_string(o.pipeline_stages) + " but this rank is " + std::to_string(pipe.rank()) + " of " +
                std::to_string(pipe.size()) + " in its pipe group");
  if (model.backend().device() != Device::CPU)
    throw Error("pipeline: stages exchange host memory; the model is on " + std::string(device_name(model.backend().device())));
}

Tensor& PipelineStage::buffer(Tensor& t, int64_t rows) {
  const int64_t C = model_.config().hidden_size;
  if (!t.defined() || t.dim(0) != rows) t = Tensor::empty({rows, C}, DType::F32);
  return t;
}

void PipelineStage::exchange(const PipeAction& a, const std::vector<TrainBatch>& batches) {
  auto rows = [&](int i) { return batches[size_t(i)].B * batches[size_t(i)].L; };
  const int me = pipe_.rank();
  // At most one send and one receive (one_f_one_b).
  const Tensor* out = nullptr;
  int to = -1;
  if (a.send_forward >= 0) out = &out_act_, to = me + 1;
  if (a.send_backward >= 0) out = &out_grad_, to = me - 1;
  Tensor* in = nullptr;
  int from = -1;
  if (a.recv_forward >= 0) in = &buffer(in_act_, rows(a.recv_forward)), from = me - 1;
  if (a.recv_backward >= 0) in = &buffer(in_grad_, rows(a.recv_backward)), from = me + 1;
  if (out && in) pipe_.send_recv(out->raw(), int64_t(out->nbytes()), to, in->raw(), int64_t(in->nbytes()), from);
  else if (out) pipe_.send(out->raw(), int64_t(out->nbytes()), to);
  else if (in) pipe_.recv(in->raw(), int64_t(in->nbytes()), from);
}

std::vector<double> PipelineStage::train_step(const std::vector<TrainBatch>& batches, float grad_scale,
                                              const GradsReady& last_ready) {
  const int stages = pipe_.size(), stage = pipe_.rank(), m = int(batches.size());
  const int slots = std::max(1, std::min(stages - stage, m));  // micro-batches in flight at most
  std::vector<double> losses(size_t(m), 0.0);
  // The first stage sends nothing after its last backward, so its sums may start during it; the other stages
  // hold them until their last message is sent (MPI may take one thread at a time: MPI_THREAD_MULTIPLE is asked
  // for tensor parallelism only).
  std::vector<std::vector<Parameter*>> ready_groups;
  const GradsReady collect = model_.first_stage() ? last_ready
                                                  : GradsReady([&](const std::vector<Parameter*>& ps) { ready_groups.push_back(ps); });
  for (const PipeAction& a : one_f_one_b(stages, stage, m)) {
    if (a.kind == PipeAction::Forward) {
      StageOutput o = model_.stage_forward(a.micro % slots, batches[size_t(a.micro)], in_act_, grad_scale);
      if (model_.last_stage()) losses[size_t(a.micro)] = o.loss;
      else out_act_ = o.output;
    } else if (a.kind == PipeAction::Backward) {
      out_grad_ = model_.stage_backward(a.micro % slots, in_grad_, a.micro == m - 1 && last_ready ? collect : GradsReady{});
    } else {
      exchange(a, batches);
    }
  }
  out_act_ = out_grad_ = Tensor();  // the slots' buffers are the model's
  for (const auto& g : ready_groups) last_ready(g);
  return losses;
}

double PipelineStage::eval(const TrainBatch& b, LossStats* stats) {
  const int stage = pipe_.rank(), stages = pipe_.size();
  if (stage > 0) {
    Tensor& in = buffer(in_act_, b.B * b.L);
    pipe_.recv(in.raw(), int64_t(in.nbytes()), stage - 1);
  }
  StageOutput o = model_.stage_eval(b, in_act_);
  if (stage < stages - 1) pipe_.send(o.output.raw(), int64_t(o.output.nbytes()), stage + 1);
  double r[4] = {o.loss, o.stats.loss_sum, double(o.stats.tokens), double(o.stats.correct)};
  pipe_.broadcast(r, sizeof r, stages - 1);
  if (stats) *stats = LossStats{r[1], int64_t(r[2]), int64_t(r[3])};
  return r[0];
}

namespace {

void send_i64(Communicator& c, int64_t v, int peer) { c.send(&v, sizeof v, peer); }
int64_t recv_i64(Communicator& c, int peer) {
  int64_t v = 0;
  c.recv(&v, sizeof v, peer);
  return v;
}

}  // namespace

std::vector<std::pair<std::string, Tensor>> gather_stages(Communicator& pipe,
                                                          const std::vector<std::pair<std::string, Tensor>>& mine) {
  std::vector<std::pair<std::string, Tensor>> all;
  if (pipe.rank() != 0) {
    send_i64(pipe, int64_t(mine.size()), 0);
    for (const auto& [name, t0] : mine) {
      const Tensor t = t0.contiguous();
      send_i64(pipe, int64_t(name.size()), 0);
      pipe.send(name.data(), int64_t(name.size()), 0);
      send_i64(pipe, int64_t(t.dtype()), 0);
      send_i64(pipe, t.ndim(), 0);
      for (int64_t d : t.shape()) send_i64(pipe, d, 0);
      pipe.send(t.raw(), int64_t(t.nbytes()), 0);
    }
    return all;
  }
  all = mine;
  for (int r = 1; r < pipe.size(); r++) {
    const int64_t n = recv_i64(pipe, r);
    for (int64_t i = 0; i < n; i++) {
      std::string name(size_t(recv_i64(pipe, r)), '\0');
      pipe.recv(name.data(), int64_t(name.size()), r);
      const auto dtype = DType(recv_i64(pipe, r));
      Shape shape(size_t(recv_i64(pipe, r)));
      for (int64_t& d : shape) d = recv_i64(pipe, r);
      Tensor t = Tensor::empty(shape, dtype);
      pipe.recv(t.raw(), int64_t(t.nbytes()), r);
      all.emplace_back(std::move(name), std::move(t));
    }
  }
  return all;
}

}  // namespace oar
