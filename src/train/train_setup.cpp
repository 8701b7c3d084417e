#include "train/train_setup.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/model_config.h"
#include "data/sft_dataset.h"
#include "io/safetensors.h"
#include "io/convert.h"
#include "io/model_source.h"
#include "train/lora_io.h"
#include "train/paddle_checkpoint.h"
#include "train/tensor_parallel.h"

namespace oar {

// ---- the model ----

LlamaTrainModel::LlamaTrainModel(std::unique_ptr<TrainableLlama> m, std::string base, std::optional<DType> paddle_params)
    : m_(std::move(m)), base_(std::move(base)), paddle_params_(paddle_params) {}

double LlamaTrainModel::forward_backward(const TrainBatch& b, float grad_scale, LossStats* s, const GradsReady& ready) {
  if (pipeline_) throw Error("forward_backward: a pipeline stage runs a step's micro-batches together (forward_backward_step)");
  return m_->forward_backward(b, grad_scale, s, ready);
}

std::vector<double> LlamaTrainModel::forward_backward_step(const std::vector<TrainBatch>& batches, float grad_scale,
                                                           const GradsReady& ready) {
  if (pipeline_) return pipeline_->train_step(batches, grad_scale, ready);
  return TrainModel::forward_backward_step(batches, grad_scale, ready);
}

double LlamaTrainModel::forward_loss(const TrainBatch& b, LossStats* s) {
  return pipeline_ ? pipeline_->eval(b, s) : m_->forward_loss(b, s);
}

void LlamaTrainModel::set_pipeline(Communicator& pipe) {
  pipeline_ = std::make_unique<PipelineStage>(*m_, pipe);
  pipe_ = &pipe;
}

void LlamaTrainModel::set_tensor_group(Communicator& group) {
  m_->set_tensor_group(group);
  tp_ = &group;
}

double LlamaTrainModel::train_flops(const TrainBatch& b) const {
  // A pipeline stage's share: its layers, and the LM head on the last stage.
  const LlamaConfig& c = m_->config();
  const TrainOptions& o = m_->options();
  const int64_t layers = c.num_hidden_layers / o.pipeline_stages, vocab = m_->last_stage() ? c.vocab_size : 0;
  return llama_train_flops(c.hidden_size, c.intermediate_size, layers, vocab, c.num_attention_heads,
                           c.num_key_value_heads, c.head_dim, b.B * b.L, b.L, o.recompute, m_->has_lora()) /
         double(o.tensor_parallel);  // a tensor-parallel rank's share of the products
}

void LlamaTrainModel::collect_parts() {
  if (!pipe_ && !tp_) return;
  std::vector<std::pair<std::string, Tensor>> mine = m_->export_weights(true);
  if (m_->has_lora())  // a LoRA checkpoint holds the adapters only
    mine.erase(std::remove_if(mine.begin(), mine.end(), [](const auto& nt) { return nt.first.find(".lora_") == std::string::npos; }),
               mine.end());
  gathered_ = gather_whole(mine);
}

std::vector<std::pair<std::string, Tensor>> LlamaTrainModel::gather_whole(
    const std::vector<std::pair<std::string, Tensor>>& mine) {
  std::vector<std::pair<std::string, Tensor>> out = mine;
  const bool first_part = !tp_ || tp_->rank() == 0;
  if (tp_)  // every part of the tensor group (the others keep no whole tensor), then the first parts of the stages
    for (auto& [name, t] : out)
      if (const int dim = tensor_split_dim(name); dim >= 0) {
        Tensor whole = join_parts(*tp_, t, dim);
        t = first_part ? whole : Tensor();
      }
  if (pipe_ && first_part) out = gather_stages(*pipe_, out);
  if (!first_part || (pipe_ && pipe_->rank() != 0)) out.clear();
  return out;
}

void LlamaTrainModel::take_local_parts(std::map<std::string, Tensor>& tensors) const {
  const TrainOptions& o = m_->options();
  if (o.tensor_parallel == 1) return;
  for (auto& [name, t] : tensors)
    if (const int dim = tensor_split_dim(name); dim >= 0) t = take_part(t, dim, o.tensor_parallel, o.tensor_rank);
}

bool LlamaTrainModel::split_over_tensor_ranks(const Parameter& p) const {
  return m_->options().tensor_parallel > 1 && tensor_split_dim(p.name) >= 0;
}

void LlamaTrainModel::save(const std::string& dir) const {
  // A directory holds one layout: the other's files (from an earlier run of another save_format) would be read
  // first by some loaders.
  remove_layout_files(dir, paddle_params_ ? CheckpointLayout::HuggingFace : CheckpointLayout::PaddleNLP);
  const bool parts = pipe_ || tp_;
  std::vector<std::pair<std::string, Tensor>> named = parts ? std::move(gathered_) : m_->export_weights(true);
  gathered_.clear();
  if (parts && named.empty()) throw Error("saving a model split over ranks: collect_parts() was not called on every rank");
  const LoraOptions* lora = m_->has_lora() ? &m_->lora() : nullptr;
  if (paddle_params_) return save_paddle_weights(dir, named, m_->config(), lora, base_, *paddle_params_);
  if (lora) return save_lora_adapter(dir, lora_adapter_from_named(named, *lora, base_));
  LlamaConfig c = m_->config();
  c.torch_dtype = "float32";  // the float32 master weights: a resumed run continues bit for bit
  write_file_atomic(join_path(dir, "config.json"), to_hf_config_json(c));
  write_safetensors(join_path(dir, "model.safetensors"), named, {{"format", "pt"}});
}

namespace {

// Where an argument's value came from, for an error about it: the config file or "command line", else (the
// default) the config file.
std::string key_origin(const TrainArgs& a, const std::string& key) {
  return a.source.count(key) ? a.source.at(key) : a.config_file;
}

// A checkpoint's whole tensor into p (this rank's part of it under tensor parallelism).
void copy_into(TrainableLlama& m, Parameter& p, const Tensor& t, const std::string& where) {
  if (t.shape() != m.whole_shape(p))
    fail(where, "tensor '" + p.name + "' has shape " + shape_str(t.shape()) + ", the model " + shape_str(m.whole_shape(p)));
  m.set_whole_value(p, t);
}

// An adapter's tensors into the model's LoRA parameters (a pipeline stage takes its own layers').
void copy_adapter_into(TrainableLlama& m, const LoraAdapter& ad) {
  for (auto& [name, t] : lora_named_tensors(ad)) {
    Parameter* p = m.find(name);
    if (!p && !m.on_this_stage(name)) continue;
    if (!p) fail(ad.where, "adapter tensor for '" + name + "' has no place in this model (other target modules or rank?)");
    copy_into(m, *p, t, ad.where);
  }
}

}  // namespace

void LlamaTrainModel::load(const std::string& dir) {
  if (m_->has_lora()) return copy_adapter_into(*m_, load_lora_adapter(dir));
  // The directory's layout decides, not this run's save_format: a run may resume from either.
  std::unique_ptr<WeightSource> ws = has_paddle_master_weights(dir) ? open_paddle_weights(dir, m_->config())
                                                                    : std::move(open_model_source(dir).weights);
  for (Parameter* p : m_->parameters()) copy_into(*m_, *p, ws->get(p->name), ws->where());
}

namespace {

// Tensor parallelism splits the heads, key/value heads, MLP features and vocabulary evenly over the ranks.
void check_tensor_split(const TrainArgs& a, const LlamaConfig& c, const std::string& config_src) {
  const int64_t tp = a.tensor_parallel_degree;
  if (tp <= 1) return;
  for (const auto& [key, n] : {std::pair<const char*, int64_t>{"num_attention_heads", c.num_attention_heads},
                               {"num_key_value_heads", c.num_key_value_heads},
                               {"intermediate_size", c.intermediate_size},
                               {"vocab_size", c.vocab_size}})
    if (n % tp != 0)
      fail(key_origin(a, "tensor_parallel_degree"),
           "tensor_parallel_degree " + std::to_string(tp) + " does not divide " + key + " " + std::to_string(n) + " (" +
               config_src + "): each rank holds an equal share");
  if (c.o_proj_bias)
    fail(key_origin(a, "tensor_parallel_degree"), "tensor_parallel_degree " + std::to_string(tp) +
                                                      ": a model with an o_proj bias (" + config_src + ") is not built yet");
  if (a.lora)
    fail(key_origin(a, "tensor_parallel_degree"), "tensor_parallel_degree " + std::to_string(tp) +
                                                      " with lora is not built yet (train LoRA with data or pipeline parallelism)");
}

// Pipeline parallelism splits the layers evenly over the stages, and the embedding and the LM head sit apart.
void check_pipeline_split(const TrainArgs& a, const LlamaConfig& c, const std::string& config_src) {
  const int64_t pp = a.pipeline_parallel_degree;
  if (pp <= 1) return;
  const std::string layers_from = a.num_hidden_layers > 0 ? key_origin(a, "num_hidden_layers") : config_src;
  if (c.num_hidden_layers % pp != 0)
    fail(key_origin(a, "pipeline_parallel_degree"),
         "pipeline_parallel_degree " + std::to_string(pp) + " does not divide num_hidden_layers " +
             std::to_string(c.num_hidden_layers) + " (" + layers_from + "): the stages hold equal shares of the layers");
  if (c.tie_word_embeddings)
    fail(key_origin(a, "pipeline_parallel_degree"),
         "pipeline_parallel_degree " + std::to_string(pp) + ": a model with tie_word_embeddings (" + config_src +
             ") is not built yet for pipelines (its embedding and LM head sit on different stages)");
}

}  // namespace

std::unique_ptr<LlamaTrainModel> build_train_model(const TrainArgs& a, const Tokenizer& tok,
                                                   const std::function<void(const std::string&)>& log,
                                                   int pipeline_stage, int tensor_rank) {
  TrainOptions to;
  to.compute = a.bf16 ? DType::BF16 : (a.fp16 && a.fp16_opt_level != "O0") ? DType::F16 : DType::F32;
  to.recompute = a.recompute;
  to.pipeline_stages = int(std::max<int64_t>(1, a.pipeline_parallel_degree));
  to.pipeline_stage = pipeline_stage;
  to.tensor_parallel = int(std::max<int64_t>(1, a.tensor_parallel_degree));
  to.tensor_rank = tensor_rank;
  const std::string& src = a.model_name_or_path;
  const int64_t needed_positions = a.is_pretrain() ? a.max_seq_length : a.max_length;
  std::unique_ptr<TrainableLlama> m;
  if (a.continue_training) {
    const ModelSource ms = open_model_source(src);
    check_pipeline_split(a, ms.config, src);
    check_tensor_split(a, ms.config, src);
    m = TrainableLlama::from_weights(ms.config, *ms.weights, to);
    const LlamaConfig& c = m->config();
    // Every pretraining sample is max_seq_length tokens, so the data always reaches it. Fine-tuning's max_length
    // is only a limit: build_run_data checks the examples themselves against the model.
    if (a.is_pretrain() && c.max_position_embeddings < a.max_seq_length)
      fail(key_origin(a, "max_seq_length"),
           "max_seq_length " + std::to_string(a.max_seq_length) + " exceeds the model's max_position_embeddings " +
               std::to_string(c.max_position_embeddings) + " (every pretraining sample has max_seq_length tokens); " +
               "set max_seq_length to at most " + std::to_string(c.max_position_embeddings));
    log("Loaded " + src + ": " + std::to_string(c.num_hidden_layers) + " layers, hidden " + std::to_string(c.hidden_size) +
        ", vocabulary " + std::to_string(c.vocab_size));
  } else {
    const std::string cfg_path = dir_exists(src) ? join_path(src, "config.json") : src;
    if (!file_exists(cfg_path)) fail(src, "continue_training false needs a config.json (a model directory or the file itself)");
    LlamaConfig c = load_hf_config(cfg_path);
    if (a.num_hidden_layers > 0) c.num_hidden_layers = a.num_hidden_layers;
    if (a.initializer_range > 0) c.initializer_range = a.initializer_range;
    // run_pretrain.py for a model built from its config: room for max_seq_length positions, and a vocabulary
    // covering the tokenizer rounded up to a multiple of 128.
    c.max_position_embeddings = std::max(c.max_position_embeddings, needed_positions);
    if (a.is_pretrain()) c.vocab_size = std::max<int64_t>(c.vocab_size, (int64_t(tok.vocab_size()) + 127) / 128 * 128);
    check_pipeline_split(a, c, cfg_path);
    check_tensor_split(a, c, cfg_path);
    m = TrainableLlama::random(c, to, uint64_t(a.seed));
    log("Initialised a " + std::to_string(c.num_parameters()) + "-parameter Llama at random from " + cfg_path + " (" +
        std::to_string(c.num_hidden_layers) + " layers, hidden " + std::to_string(c.hidden_size) + ", vocabulary " +
        std::to_string(c.vocab_size) + ", initializer_range " + std::to_string(c.initializer_range) + ", seed " +
        std::to_string(a.seed) + ")");
  }
  if (m->config().rope_layout == RopeLayout::Interleaved && !a.lora)
    fail(src, "a llama2.c checkpoint (interleaved RoPE) cannot be written back in Hugging Face layout; fine-tune it with "
              "lora, or convert it to a Hugging Face directory first");
  if (tok.vocab_size() > m->config().vocab_size)
    fail(a.tokenizer_path(), "the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens but the model's vocabulary is " +
                                 std::to_string(m->config().vocab_size));
  if (a.lora) {
    LoraOptions lo;
    if (!a.lora_path.empty()) {
      LoraAdapter ad = load_lora_adapter(a.lora_path);
      check_lora_against_config(ad, m->config(), src);
      lo = lora_options_of(ad);
      lo.seed = uint64_t(a.seed);
      m->add_lora(lo);
      copy_adapter_into(*m, ad);
      log("LoRA from " + a.lora_path + ": rank " + std::to_string(lo.rank) + ", alpha " + std::to_string(lo.alpha));
    } else {
      lo.rank = a.lora_rank;
      // run_finetune.py hard-codes lora_alpha = 2 x rank (scaling 2); with rslora alpha 4 and scaling alpha/sqrt(r).
      // The training model scales by alpha/r, so rsLoRA is expressed as the alpha giving the same scaling.
      lo.alpha = a.rslora ? 4.0 * std::sqrt(double(a.lora_rank)) : 2.0 * double(a.lora_rank);
      lo.seed = uint64_t(a.seed);
      m->add_lora(lo);
      log("LoRA: rank " + std::to_string(lo.rank) + ", scaling " + std::to_string(lo.alpha / double(lo.rank)) +
          ", targets q/k/v/o/gate/up/down_proj; base weights frozen");
    }
  }
  std::optional<DType> paddle_params;
  if (a.save_format == "paddle") {
    if (!a.lora) check_paddle_can_express(m->config(), src);
    if (!a.lora && m->config().tie_word_embeddings)
      fail(src, "ties lm_head to the embedding, but PaddleNLP 2.8.1's Llama trains its own lm_head, so save_format "
                "paddle cannot hold this run; untie it first (oar convert --to paddle writes lm_head as a copy)");
    paddle_params = paddle_params_dtype(a);
  }
  return std::make_unique<LlamaTrainModel>(std::move(m), src, paddle_params);
}

// ---- fine-tuning data ----

namespace {

// A permutation of [0, n) from (seed, epoch): Fisher-Yates over a counter-based generator, so the order is the
// same on every platform and needs no saved RNG state to resume.
std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch) {
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) p[size_t(i)] = i;
  uint64_t s = mix(seed ^ mix(uint64_t(epoch) + 0x5851F42D4C957F2Dull));
  for (int64_t i = n - 1; i > 0; i--) {
    s = mix(s);
    const int64_t j = int64_t((unsigned __int128)s * uint64_t(i + 1) >> 64);  // unbiased enough for shuffling
    std::swap(p[size_t(i)], p[size_t(j)]);
  }
  return p;
}

void check_ids(const TrainBatch& b, int64_t vocab, const char* what) {
  for (int32_t id : b.input_ids)
    if (id < 0 || id >= vocab)
      throw Error(std::string(what) + ": token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                  std::to_string(vocab) + " (was the data made with another tokenizer?)");
}

}  // namespace

SftTrainData::SftTrainData(std::vector<PackedRow> rows, int64_t batch_size, bool drop_last, uint64_t seed, PadOptions pad)
    : rows_(std::move(rows)), B_(batch_size), drop_last_(drop_last), seed_(seed), pad_(pad) {}

int64_t SftTrainData::batches_per_epoch() const {
  const int64_t n = int64_t(rows_.size());
  return drop_last_ ? n / B_ : (n + B_ - 1) / B_;
}

std::vector<int64_t> SftTrainData::epoch_order(int64_t epoch) const { return permutation(int64_t(rows_.size()), seed_, epoch); }

TrainBatch SftTrainData::batch(int64_t epoch, int64_t index) const {
  const int64_t bpe = batches_per_epoch();
  if (index < 0 || index >= bpe) throw Error("training batch " + std::to_string(index) + " is out of range");
  if (epoch != cached_epoch_) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  const std::vector<int64_t>& order = cached_order_;
  std::vector<const PackedRow*> rows;
  for (int64_t i = index * B_; i < std::min<int64_t>((index + 1) * B_, int64_t(order.size())); i++)
    rows.push_back(&rows_[size_t(order[size_t(i)])]);
  return make_batch(rows, pad_);
}

SftEvalData::SftEvalData(std::vector<PackedRow> rows, int64_t batch_size, PadOptions pad)
    : rows_(std::move(rows)), B_(batch_size), pad_(pad) {}

int64_t SftEvalData::num_batches() const { return (int64_t(rows_.size()) + B_ - 1) / B_; }

TrainBatch SftEvalData::batch(int64_t index) const {
  std::vector<const PackedRow*> rows;
  for (int64_t i = index * B_; i < std::min<int64_t>((index + 1) * B_, int64_t(rows_.size())); i++) rows.push_back(&rows_[size_t(i)]);
  return make_batch(rows, pad_);
}

// ---- pretraining data ----

PretrainTrainData::PretrainTrainData(std::shared_ptr<PretrainSamples> s, int64_t batch_size, int64_t vocab)
    : s_(std::move(s)), B_(batch_size), vocab_(vocab) {}

int64_t PretrainTrainData::batches_per_epoch() const { return s_->size() / B_; }

TrainBatch PretrainTrainData::batch(int64_t epoch, int64_t index) const {
  // The sample count is derived from max_steps, so one pass suffices; further epochs wrap around.
  const int64_t first = ((epoch * batches_per_epoch() + index) * B_) % (batches_per_epoch() * B_);
  std::vector<std::vector<int32_t>> texts(static_cast<size_t>(B_));
  for (int64_t r = 0; r < B_; r++) s_->sample(first + r, texts[size_t(r)]);
  TrainBatch b = make_pretrain_batch(texts);
  check_ids(b, vocab_, "pretraining data");
  return b;
}

PretrainEvalData::PretrainEvalData(std::shared_ptr<PretrainSamples> s, int64_t batch_size, int64_t vocab)
    : s_(std::move(s)), B_(batch_size), vocab_(vocab) {}

int64_t PretrainEvalData::num_batches() const { return s_->size() / B_; }

TrainBatch PretrainEvalData::batch(int64_t index) const {
  std::vector<std::vector<int32_t>> texts(static_cast<size_t>(B_));
  for (int64_t r = 0; r < B_; r++) s_->sample(index * B_ + r, texts[size_t(r)]);
  TrainBatch b = make_pretrain_batch(texts);
  check_ids(b, vocab_, "pretraining data");
  return b;
}

namespace {

std::vector<PackedRow> to_rows(const TrainArgs& a, const std::vector<SftExample>& ex, int64_t* dropped) {
  std::vector<PackedRow> rows;
  if (a.zero_padding) {
    rows = a.greedy_zero_padding ? pack_greedy(ex, a.max_length) : pack_in_order(ex, a.max_length);
    int64_t used = 0;
    for (const auto& r : rows) used += int64_t(r.examples.size());
    *dropped = int64_t(ex.size()) - used;
  } else {
    for (size_t i = 0; i < ex.size(); i++) rows.push_back(single_row(ex[i], int64_t(i)));
    *dropped = 0;
  }
  return rows;
}

// PaddleNLP lets max_length exceed the model's max_position_embeddings (its own lora_argument.json asks 2048 of
// any model). Only an example longer than the model's positions is refused, up front, naming the key to change.
void check_positions(const TrainArgs& a, const std::vector<SftExample>& ex, const std::vector<std::string>& wheres,
                     int64_t max_positions) {
  if (a.max_length <= max_positions) return;  // examples are shorter than max_length anyway
  for (size_t i = 0; i < ex.size(); i++)
    if (ex[i].size() > max_positions)
      fail(key_origin(a, "max_length"),
           "max_length " + std::to_string(a.max_length) + (a.was_given("max_length") ? "" : " (the default)") +
               " exceeds the model's max_position_embeddings " + std::to_string(max_positions) + " and the example at " +
               wheres[i] + " reaches " + std::to_string(ex[i].size()) + " tokens; set max_length to at most " +
               std::to_string(max_positions));
}

std::string rows_summary(const char* name, size_t examples, const std::vector<PackedRow>& rows, int64_t dropped) {
  int64_t tokens = 0;
  for (const auto& r : rows) tokens += r.size();
  std::string s = std::string(name) + ": " + std::to_string(examples) + " examples";
  if (rows.size() != examples || dropped) s += " in " + std::to_string(rows.size()) + " packs";
  if (dropped) s += " (" + std::to_string(dropped) + " longer than max_length dropped)";
  return s + ", " + std::to_string(tokens) + " tokens";
}

}  // namespace

namespace {

// "{{ name }}" -> vars[name] (PaddleNLP's legacy chat_template.json uses only such plain substitutions).
std::string substitute(const std::string& t, const std::map<std::string, std::string>& vars, const std::string& where) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = t.find("{{", pos);
    const size_t close = open == std::string::npos ? open : t.find("}}", open + 2);
    if (close == std::string::npos) return out + t.substr(pos);
    std::string name = t.substr(open + 2, close - open - 2);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    auto v = vars.find(name);
    if (v == vars.end()) fail(where, "chat template variable '" + name + "' has no value");
    out += t.substr(pos, open - pos) + v->second;
    pos = close + 2;
  }
}

// A Jinja template (Hugging Face's chat_template): each round's prompt part is what add_generation_prompt adds
// after the previous rounds, its answer part what the assistant message adds after that; the template must render
// conversations as prefixes of longer ones (all common templates do; others are refused, naming the record).
ChatRenderer jinja_renderer(std::shared_ptr<ChatTemplate> t) {
  return [t](const std::vector<std::pair<std::string, std::string>>& conv, const nlohmann::json& context) {
    ChatSegments seg;
    std::vector<ChatMessage> msgs;
    if (context.contains("system") && context["system"].is_string()) msgs.push_back({"system", context["system"].get<std::string>()});
    std::string done;
    for (const auto& [user, bot] : conv) {
      msgs.push_back({"user", user});
      const std::string prompt = t->render(msgs, true);
      msgs.push_back({"assistant", bot});
      const std::string full = t->render(msgs, false);
      if (prompt.compare(0, done.size(), done) != 0 || full.compare(0, prompt.size(), prompt) != 0)
        throw Error("chat template " + t->origin() + " does not render this conversation as growing prefixes; "
                    "it cannot be split into rounds");
      seg.rounds.emplace_back(prompt.substr(done.size()), full.substr(prompt.size()));
      done = full;
    }
    return seg;
  };
}

}  // namespace

ChatRenderer make_chat_renderer(const TrainArgs& a, const Tokenizer& tok, std::string* origin) {
  if (a.chat_template == "none") return {};
  std::string path = a.chat_template;
  const std::string where = a.source.count("chat_template") ? a.source.at("chat_template") : "";
  if (path.empty()) {
    // PaddleNLP: a chat_template.json beside the tokenizer turns the template on.
    const std::string dir = dir_exists(a.tokenizer_path()) ? a.tokenizer_path() : "";
    if (dir.empty() || !file_exists(join_path(dir, "chat_template.json"))) return {};
    path = join_path(dir, "chat_template.json");
  } else if (dir_exists(path)) {
    for (const char* f : {"chat_template.json", "chat_template.jinja", "tokenizer_config.json"})
      if (file_exists(join_path(path, f))) { path = join_path(path, f); break; }
    if (dir_exists(path)) fail(where, "chat_template: no chat_template.json, chat_template.jinja or tokenizer_config.json in " + path);
  } else if (!file_exists(path)) {
    fail(where, "chat_template: no such file '" + path + "'");
  }
  *origin = path;
  const std::string text = read_file(path);
  const std::string bos = tok.bos_id() >= 0 ? tok.id_to_piece(tok.bos_id()) : "";
  const std::string eos = tok.eos_ids().empty() ? "" : tok.id_to_piece(tok.eos_ids()[0]);
  nlohmann::json j = json_or_discarded(text, path);
  if (!j.is_discarded() && j.is_object() && j.contains("conversation")) {
    // PaddleNLP's own format: {"system": ..., "conversation": [user part, bot part], "query": ...}.
    const auto& c = j["conversation"];
    if (!c.is_array() || c.size() != 2 || !c[0].is_string() || !c[1].is_string())
      fail(path, "\"conversation\" must be two strings (the user part and the bot part of a round)");
    const std::string sys = j.value("system", std::string());
    const std::string user_t = c[0].get<std::string>(), bot_t = c[1].get<std::string>();
    return [sys, user_t, bot_t, path](const std::vector<std::pair<std::string, std::string>>& conv, const nlohmann::json& ctx) {
      std::map<std::string, std::string> vars;
      for (auto it = ctx.begin(); it != ctx.end(); ++it)
        vars[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
      ChatSegments seg;
      seg.system = substitute(sys, vars, path);
      for (size_t i = 0; i < conv.size(); i++) {
        vars["index"] = std::to_string(i);
        vars["user"] = conv[i].first;
        vars["bot"] = conv[i].second;
        seg.rounds.emplace_back(substitute(user_t, vars, path), substitute(bot_t, vars, path));
      }
      return seg;
    };
  }
  std::string source = text;
  if (!j.is_discarded() && j.is_object()) {
    if (!j.contains("chat_template") || !j["chat_template"].is_string())
      fail(path, "no \"chat_template\" string (nor PaddleNLP's \"conversation\") in this file");
    source = j["chat_template"].get<std::string>();
  }
  return jinja_renderer(std::make_shared<ChatTemplate>(source, path, bos, eos));
}

namespace {
std::unique_ptr<TrainData> rank_share(std::unique_ptr<TrainData> global, const TrainArgs& a, int dp_rank) {
  if (a.dataset_world_size() <= 1) return global;
  return std::make_unique<DataParallelSlice>(std::move(global), dp_rank, int(a.dataset_world_size()));
}

template <class T>
void broadcast_vector(Communicator& c, std::vector<T>& v) {
  int64_t n = int64_t(v.size());
  c.broadcast(&n, sizeof n, 0);
  v.resize(size_t(n));
  c.broadcast(v.data(), n * int64_t(sizeof(T)), 0);
}
}  // namespace

IndexSharing share_indices_from_rank0(Communicator& ranks) {
  return [&ranks](const std::function<GptIndices()>& build) {
    // Each step starts with an agreement, so that a rank that failed on its own meets the others there.
    std::string first_error;
    if (!all_ranks_ok(ranks, "", &first_error)) throw OtherRankFailed(first_error);
    GptIndices ix;
    std::string error;
    if (ranks.rank() == 0) {
      try {
        ix = build();
      } catch (const Error& e) {
        error = e.what();
      }
    }
    if (!all_ranks_ok(ranks, error, &first_error)) throw OtherRankFailed(first_error);
    int64_t head[3] = {ix.num_epochs, ix.tokens_per_epoch, ix.separate_last_epoch ? 1 : 0};
    ranks.broadcast(head, sizeof head, 0);
    ix.num_epochs = head[0];
    ix.tokens_per_epoch = head[1];
    ix.separate_last_epoch = head[2] != 0;
    broadcast_vector(ranks, ix.doc_idx);
    broadcast_vector(ranks, ix.sample_idx);
    broadcast_vector(ranks, ix.shuffle_idx);
    return ix;
  };
}

RunData build_run_data(const TrainArgs& a, const Tokenizer& tok, int64_t vocab, int64_t max_positions, int dp_rank,
                       Communicator* ranks) {
  RunData d;
  const int64_t global_batch = a.per_device_train_batch_size * a.dataset_world_size();
  if (a.is_pretrain()) {
    auto inputs = find_pretrain_inputs(a.input_dir);
    gpt_check_data_split(a.split, a.do_train, a.do_eval, a.do_predict);
    auto counts = pretrain_num_samples(a.per_device_train_batch_size, a.per_device_eval_batch_size, a.dataset_world_size(),
                                       std::max<int64_t>(a.max_steps, 1), a.gradient_accumulation_steps,
                                       a.effective_eval_steps(), a.eval_iters, 100);
    const IndexSharing share = ranks && ranks->size() > 1 ? share_indices_from_rank0(*ranks) : IndexSharing{};
    PretrainDatasets ds = build_pretrain_datasets(inputs, a.split, counts, a.max_seq_length, uint32_t(a.seed), share);
    if (a.do_train) {
      if (!ds.train) fail(a.input_dir, "the split '" + a.split + "' leaves no training data");
      d.train = rank_share(std::make_unique<PretrainTrainData>(ds.train, global_batch, vocab), a, dp_rank);
    }
    // Evaluation covers PaddleNLP's samples (eval_iters batches of every rank): each rank evaluates the whole
    // global batch, which gives PaddleNLP's mean as every sample counts as many tokens.
    const int64_t eval_batch = a.per_device_eval_batch_size * a.dataset_world_size();
    if (a.do_eval && ds.valid) d.eval = std::make_unique<PretrainEvalData>(ds.valid, eval_batch, vocab);
    if (a.do_predict && ds.test) d.test = std::make_unique<PretrainEvalData>(ds.test, eval_batch, vocab);
    d.summary = std::to_string(inputs.size()) + " input file(s) from " + a.input_dir +
                (share ? "; indices built by rank 0 and shared" : "") + "; samples of " +
                std::to_string(a.max_seq_length + 1) + " tokens: train " + std::to_string(ds.train ? ds.train->size() : 0) +
                ", valid " + std::to_string(ds.valid ? ds.valid->size() : 0) + ", test " +
                std::to_string(ds.test ? ds.test->size() : 0);
    return d;
  }
  SftOptions so;
  so.src_length = a.src_length;
  so.max_length = a.max_length;
  std::string chat_origin;
  so.chat = make_chat_renderer(a, tok, &chat_origin);
  PadOptions pad;
  pad.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  pad.pad_to = a.pad_to_max_length ? a.max_length : 0;
  pad.pad_to_multiple_of = a.pad_to_multiple_of;
  std::vector<std::string> parts;
  int64_t dropped = 0;
  if (a.do_train) {
    std::vector<std::string> wheres;
    auto ex = load_sft_examples(a.dataset_name_or_path, "train", tok, so, &wheres);
    check_positions(a, ex, wheres, max_positions);
    auto rows = to_rows(a, ex, &dropped);
    if (rows.empty()) fail(sft_split_path(a.dataset_name_or_path, "train"), "no training examples (all longer than max_length?)");
    parts.push_back(rows_summary("train", ex.size(), rows, dropped));
    d.train = rank_share(std::make_unique<SftTrainData>(std::move(rows), global_batch, a.dataloader_drop_last,
                                                        uint64_t(a.seed), pad), a, dp_rank);
  }
  if (a.do_eval) {
    std::vector<std::string> wheres;
    auto ex = load_sft_examples(a.dataset_name_or_path, "dev", tok, so, &wheres);
    check_positions(a, ex, wheres, max_positions);
    auto rows = to_rows(a, ex, &dropped);
    parts.push_back(rows_summary("dev", ex.size(), rows, dropped));
    d.eval = std::make_unique<SftEvalData>(std::move(rows), a.per_device_eval_batch_size, pad);
  }
  if (a.do_predict && file_exists(join_path(a.dataset_name_or_path, "test.json"))) {
    std::vector<std::string> wheres;
    auto ex = load_sft_examples(a.dataset_name_or_path, "test", tok, so, &wheres);
    check_positions(a, ex, wheres, max_positions);
    auto rows = to_rows(a, ex, &dropped);
    parts.push_back(rows_summary("test", ex.size(), rows, dropped));
    d.test = std::make_unique<SftEvalData>(std::move(rows), a.per_device_eval_batch_size, pad);
  }
  if (so.chat) parts.push_back("chat template " + chat_origin);
  for (const auto& p : parts) d.summary += (d.summary.empty() ? "" : "; ") + p;
  return d;
}

}  // namespace oar
