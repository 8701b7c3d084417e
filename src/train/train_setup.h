// From TrainArgs to the trainer's inputs: the Llama model (random from a config, or pretrained; LoRA when asked)
// wrapped as a TrainModel, and the data (fine-tuning JSON lines or pretraining .bin/.idx) wrapped as
// TrainData / EvalData. The data pipeline (src/data) does the reading, tokenizing, packing and sample order;
// this file only chooses and batches, following run_finetune.py and run_pretrain.py.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/batching.h"
#include "core/communicator.h"
#include "data/gpt_dataset.h"
#include "data/sft_dataset.h"
#include "tokenizer/tokenizer.h"
#include "train/pipeline.h"
#include "train/train_args.h"
#include "train/trainable_llama.h"
#include "train/trainer.h"

namespace oar {

// TrainableLlama as the trainer sees it. save()/load() write and read the Hugging Face layout (config.json +
// model.safetensors in float32) or, for LoRA runs, the PEFT adapter (adapter_config.json +
// adapter_model.safetensors); with save_format "paddle" PaddleNLP's (train/paddle_checkpoint.h).
class LlamaTrainModel : public TrainModel {
 public:
  // `paddle_params`: save in PaddleNLP's layout with parameters of this dtype (paddle_checkpoint.h); nullopt:
  // Hugging Face's.
  LlamaTrainModel(std::unique_ptr<TrainableLlama> m, std::string base_model_name_or_path,
                  std::optional<DType> paddle_params = std::nullopt);
  std::vector<Parameter*> parameters() override { return m_->parameters(); }
  double forward_backward(const TrainBatch& b, float grad_scale, LossStats* s, const GradsReady& ready) override;
  std::vector<double> forward_backward_step(const std::vector<TrainBatch>& batches, float grad_scale,
                                            const GradsReady& ready) override;
  double forward_loss(const TrainBatch& b, LossStats* s) override;
  void zero_grad() override { m_->zero_grad(); }
  double train_flops(const TrainBatch& b) const override;
  void collect_parts() override;
  std::vector<std::pair<std::string, Tensor>> gather_whole(const std::vector<std::pair<std::string, Tensor>>& mine) override;
  void take_local_parts(std::map<std::string, Tensor>& tensors) const override;
  bool split_over_tensor_ranks(const Parameter& p) const override;
  void save(const std::string& dir) const override;
  void load(const std::string& dir) override;
  TrainableLlama& llama() { return *m_; }
  // Pipeline parallelism: the model is one stage (TrainOptions::pipeline_stage) of `pipe`'s pipeline.
  void set_pipeline(Communicator& pipe);
  // Tensor parallelism: the model is one part (TrainOptions::tensor_rank) of each split parameter.
  void set_tensor_group(Communicator& group);

 private:
  std::unique_ptr<TrainableLlama> m_;
  std::string base_;
  std::optional<DType> paddle_params_;
  std::unique_ptr<PipelineStage> pipeline_;
  Communicator* pipe_ = nullptr;
  Communicator* tp_ = nullptr;
  mutable std::vector<std::pair<std::string, Tensor>> gathered_;  // the whole model's weights (collect_parts), for save()
};

// The model a run starts from (before any checkpoint is restored): continue_training false -> random from
// model_name_or_path's config.json (with num_hidden_layers / initializer_range overrides, and for pretraining
// PaddleNLP's max_position_embeddings >= max_seq_length and vocabulary rounded up to a multiple of 128 covering
// the tokenizer); true -> from_pretrained. Then LoRA (rank lora_rank, alpha 2 x rank as PaddleNLP hard-codes;
// rsLoRA alpha 4 / sqrt(rank) scaling) on all seven projections, started from lora_path when given.
// `log` receives one-line descriptions. With pipeline_parallel_degree > 1 the model is stage `pipeline_stage`,
// with tensor_parallel_degree > 1 part `tensor_rank` of each split parameter.
std::unique_ptr<LlamaTrainModel> build_train_model(const TrainArgs& a, const Tokenizer& tok,
                                                   const std::function<void(const std::string&)>& log,
                                                   int pipeline_stage = 0, int tensor_rank = 0);

// Fine-tuning: rows (one example each, or packs with zero_padding) shuffled per epoch by (seed, epoch), batched
// per_device_train_batch_size rows at a time, padded to the longest row (pad_to_max_length / pad_to_multiple_of
// as PaddleNLP's collator). The last, smaller batch is kept unless dataloader_drop_last.
class SftTrainData : public TrainData {
 public:
  SftTrainData(std::vector<PackedRow> rows, int64_t batch_size, bool drop_last, uint64_t seed, PadOptions pad);
  int64_t batches_per_epoch() const override;
  TrainBatch batch(int64_t epoch, int64_t index) const override;
  int64_t num_rows() const { return int64_t(rows_.size()); }
  // The row order of an epoch (exposed for tests).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  std::vector<PackedRow> rows_;
  int64_t B_;
  bool drop_last_;
  uint64_t seed_;
  PadOptions pad_;
  mutable int64_t cached_epoch_ = -1;  // the last epoch's order, so each batch does not reshuffle
  mutable std::vector<int64_t> cached_order_;
};

// Dev/test rows in file order.
class SftEvalData : public EvalData {
 public:
  SftEvalData(std::vector<PackedRow> rows, int64_t batch_size, PadOptions pad);
  int64_t num_batches() const override;
  TrainBatch batch(int64_t index) const override;

 private:
  std::vector<PackedRow> rows_;
  int64_t B_;
  PadOptions pad_;
};

// One data-parallel rank's micro-batches: its rows of the global batch (per_device_train_batch_size x ranks
// rows) that `global` deals, so that n ranks together see the samples one process with the global batch sees.
// (The losses agree when every row counts as many tokens, as in pretraining; a fine-tuning loss is each rank's
// token mean averaged over the ranks, as on PaddleNLP's cards.)
class DataParallelSlice : public TrainData {
 public:
  DataParallelSlice(std::unique_ptr<TrainData> global, int rank, int ranks)
      : global_(std::move(global)), rank_(rank), ranks_(ranks) {}
  int64_t batches_per_epoch() const override { return global_->batches_per_epoch(); }
  TrainBatch batch(int64_t epoch, int64_t index) const override { return rank_rows(global_->batch(epoch, index), rank_, ranks_); }

 private:
  std::unique_ptr<TrainData> global_;
  int rank_, ranks_;
};

// Pretraining: GPTDataset samples in order (the shuffle lives in its indices), B per micro-batch; ids are checked
// against the model's vocabulary.
class PretrainTrainData : public TrainData {
 public:
  PretrainTrainData(std::shared_ptr<PretrainSamples> s, int64_t batch_size, int64_t vocab_size);
  int64_t batches_per_epoch() const override;
  TrainBatch batch(int64_t epoch, int64_t index) const override;

 private:
  std::shared_ptr<PretrainSamples> s_;
  int64_t B_, vocab_;
};

class PretrainEvalData : public EvalData {
 public:
  PretrainEvalData(std::shared_ptr<PretrainSamples> s, int64_t batch_size, int64_t vocab_size);
  int64_t num_batches() const override;
  TrainBatch batch(int64_t index) const override;

 private:
  std::shared_ptr<PretrainSamples> s_;
  int64_t B_, vocab_;
};

// The chat template of a fine-tuning run (PaddleNLP: the chat_template key, else chat_template.json beside the
// tokenizer; "none" turns it off): PaddleNLP's own JSON format ({"system", "conversation": [user part, bot part]}
// with {{user}} {{bot}} {{index}} and context keys), or a Jinja template (a .jinja file, or a JSON file with a
// "chat_template" string such as tokenizer_config.json), split into rounds by rendering growing conversations.
// Returns an empty renderer when none applies; `origin` receives the file used.
ChatRenderer make_chat_renderer(const TrainArgs& a, const Tokenizer& tok, std::string* origin);

struct RunData {
  std::unique_ptr<TrainData> train;
  std::unique_ptr<EvalData> eval, test;
  std::string summary;  // one line: how many examples / samples, packs, tokens
};

// Reads what the arguments ask for (train when do_train, dev when do_eval, test when do_predict).
// max_positions is the model's max_position_embeddings: a fine-tuning max_length beyond it is accepted (PaddleNLP
// does not compare them) unless an example of the data is longer than it, which is an error naming max_length.
// With a.dataset_world_size() > 1 the training data is `dp_rank`'s slice of the global batches; evaluation data
// is whole on every rank.
// With `ranks` (a multi-process run) the pretraining indices are built once, by rank 0, and sent to the others.
RunData build_run_data(const TrainArgs& a, const Tokenizer& tok, int64_t vocab_size, int64_t max_positions,
                       int dp_rank = 0, Communicator* ranks = nullptr);

// Rank 0 builds, the group receives (IndexSharing over a communicator). When rank 0 fails, every rank throws.
IndexSharing share_indices_from_rank0(Communicator& ranks);

}  // namespace oar
