// `oar finetune CFG.json [--key value ...]` and `oar pretrain CFG.json [--key value ...]`: PaddleNLP's
// run_finetune.py and run_pretrain.py with the same argument files (src/train/train_args.h), on one process or
// as the ranks of an MPI job (`mpirun -np N oar pretrain CFG.json`: data and pipeline parallelism, sharding).
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/mpi_world.h"
#include "tokenizer/tokenizer.h"
#include "train/parallel_groups.h"
#include "train/train_args.h"
#include "train/train_setup.h"
#include "train/trainer.h"

namespace oar::cli {
namespace {

// Rank 0's lines also go to its workerlog (the other ranks' stdout is theirs).
std::FILE* g_rank0_log = nullptr;

void say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
  if (g_rank0_log) {
    std::fprintf(g_rank0_log, "%s\n", s.c_str());
    std::fflush(g_rank0_log);
  }
}

// This process's place in the run: rank 0 of 1, or a rank of the MPI job that started it.
struct Job {
  int rank = 0, size = 1, local_size = 1;
  Communicator* comm = nullptr;  // null on one process
};

Job join_job() {
  Job j;
  if (!launched_by_mpi()) return j;
  MpiWorld& w = MpiWorld::get();
  j.rank = w.rank();
  j.size = w.size();
  j.local_size = w.local_size();
  j.comm = &w.world();
  // The ranks on one machine share its cores, unless OMP_NUM_THREADS says otherwise. A launcher that bound this
  // rank to some cores (OpenMPI binds each of 2 ranks to one core by default) has already given it its share.
  if (!std::getenv("OMP_NUM_THREADS")) {
    const int allowed = omp_get_num_procs(), online = int(sysconf(_SC_NPROCESSORS_ONLN));
    omp_set_num_threads(allowed < online ? allowed : std::max(1, online / j.local_size));
  }
  return j;
}

void redirect_output(const std::string& path) {
  std::fflush(stdout);
  std::fflush(stderr);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot open for writing");
  ::dup2(fd, 1);
  ::dup2(fd, 2);
  ::close(fd);
}

// paddle.distributed.launch's per-rank logs: LOG_DIR/workerlog.N holds rank N's output. Rank 0 also prints to the
// console; the others print only there.
void open_worker_logs(const Job& job, const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (!dir_exists(log_dir)) fail(log_dir, "cannot create the log directory (log_dir): " + ec.message());
  const std::string path = join_path(log_dir, "workerlog." + std::to_string(job.rank));
  if (job.rank != 0) return redirect_output(path);
  g_rank0_log = std::fopen(path.c_str(), "w");
  if (!g_rank0_log) fail(path, "cannot open for writing");
}

// Set once every rank has built its model, data and trainer; an error after that ends the job with MPI_Abort.
bool g_setup_agreed = false;

// The last agreement of setup (arguments, files, model, data): when a rank failed, rank 0 prints the lowest failing
// rank's error as the one line of a single process, and every rank exits 2 without MPI_Abort.
bool agree_on_setup(const Job& job, const std::string& error) {
  g_setup_agreed = true;
  std::string first;
  if (all_ranks_ok(*job.comm, error, &first)) return true;
  if (job.rank == 0) {
    std::fflush(stdout);
    std::fprintf(stderr, "oar: error: %s\n", first.c_str());
  }
  return false;
}

int train_process(TrainMode mode, const std::vector<std::string>& argv, const Job& job);

// Whether the data-parallel gradient sums overlap the backward, and why: rank 0's choice on every rank (an
// environment that differs between machines must not split the job's collectives). They overlap when the
// data-parallel ranks span machines, and under sharding stage2, which frees each gradient's memory once it is
// reduced (summed after the backward, every gradient would be whole at once). On one machine the sums are copies
// on the cores the backward keeps busy, and summing after it measured faster (BENCHMARKS.md). Under tensor
// parallelism (its group communicates inside the backward) they overlap only where MPI lets two threads call at
// once (MPI_THREAD_MULTIPLE); otherwise they run after the backward.
// OAR_GRAD_OVERLAP=1 or 0 forces either (tests, bench/dp_scaling.sh).
bool choose_grad_overlap(const ParallelGroups& g, bool stage2_asked, Communicator& world, std::string* why) {
  const char* env = std::getenv("OAR_GRAD_OVERLAP");
  std::string forced = env ? env : "";
  if (!forced.empty() && forced != "0" && forced != "1") {
    if (world.rank() == 0) std::fprintf(stderr, "oar: warning: OAR_GRAD_OVERLAP=%s ignored (0 or 1)\n", forced.c_str());
    forced.clear();
  }
  const bool one_machine = g.replicas->on_one_machine();
  const bool stage2 = stage2_asked && g.sharding && g.sharding->size() > 1;
  int overlap = 0;
  if (g.tensor && !world.concurrent_with_other_groups()) {
    *why = "tensor parallelism, MPI calls from one thread at a time";
  } else if (!forced.empty()) {
    overlap = forced == "1";
    *why = "OAR_GRAD_OVERLAP=" + forced;
  } else {
    overlap = !one_machine || stage2;
    *why = !one_machine ? "the data-parallel ranks span machines"
           : stage2     ? "sharding stage2 frees each gradient as it is reduced"
                        : "the data-parallel ranks share one machine";
  }
  world.broadcast(&overlap, sizeof overlap, 0);
  return overlap != 0;
}

// The config file is the first argument when it is not a --key (PaddleNLP: a single .json argument): it goes to
// `config` (empty without one), and the other arguments are returned.
std::vector<std::string> split_config_argument(const std::vector<std::string>& argv, std::string* config) {
  if (argv.empty() || argv[0].rfind("--", 0) == 0) return argv;
  *config = argv[0];
  return {argv.begin() + 1, argv.end()};
}

// Whether the arguments ask for tensor parallelism (read before MPI starts, to choose its thread level; any
// problem with them is left to the real parse, which reports it).
bool asks_for_tensor_parallelism(TrainMode mode, const std::vector<std::string>& argv) {
  try {
    std::string config;
    const std::vector<std::string> rest = split_config_argument(argv, &config);
    const char* size = std::getenv("OMPI_COMM_WORLD_SIZE") ? std::getenv("OMPI_COMM_WORLD_SIZE") : std::getenv("PMI_SIZE");
    ArgsReport rep;
    return parse_train_args(mode, config, rest, &rep, size ? std::max(1, std::atoi(size)) : 1).tensor_parallel_degree > 1;
  } catch (...) {
    return false;
  }
}

int run_training(TrainMode mode, const std::vector<std::string>& argv) {
  if (launched_by_mpi() && asks_for_tensor_parallelism(mode, argv)) MpiWorld::ask_for_concurrent_calls();
  const Job job = join_job();
  if (job.size == 1) return train_process(mode, argv, job);
  // Until the worker logs are open, only rank 0 speaks (every rank parses the same arguments).
  if (job.rank != 0) redirect_output("/dev/null");
  std::string error;
  try {
    const int rc = train_process(mode, argv, job);
    if (rc == 0) job.comm->barrier();  // 2: a setup failure every rank has agreed on
    return rc;
  } catch (const OtherRankFailed& e) {  // agreed already, inside setup: rank 0 reports it
    if (job.rank == 0) std::fprintf(stderr, "oar: error: %s\n", e.what());
    return 2;
  } catch (const Error& e) {
    error = e.what();
  } catch (const std::bad_alloc&) {
    error = "out of memory";
  } catch (const std::exception& e) {
    error = std::string("internal error: ") + e.what();
  }
  if (!g_setup_agreed) {
    agree_on_setup(job, error);
    return 2;
  }
  // Mid-run, the others may wait in a collective that this rank will never join: end the whole job.
  std::fflush(stdout);
  std::fprintf(stderr, "oar: error: rank %d: %s\n", job.rank, error.c_str());
  std::fflush(stderr);
  if (g_rank0_log) std::fflush(g_rank0_log);
  MpiWorld::get().abort(2);
}

int train_process(TrainMode mode, const std::vector<std::string>& argv, const Job& job) {
  const char* cmd = mode == TrainMode::Pretrain ? "pretrain" : "finetune";
  for (const auto& s : argv)
    if (s == "--help" || s == "-h") {
      std::printf("%s", train_args_help(mode).c_str());
      return 0;
    }
  std::string config;
  const std::vector<std::string> rest = split_config_argument(argv, &config);
  if (rest.size() < argv.size() && !file_exists(config)) fail(config, "no such config file");
  ArgsReport rep;
  TrainArgs a = parse_train_args(mode, config, rest, &rep, job.size);
  if (job.size > 1) open_worker_logs(job, a.log_dir);
  for (const auto& w : rep.warnings) std::fprintf(stderr, "oar: warning: %s\n", w.c_str());
  if (!rep.ignored.empty()) {
    std::string s;
    for (const auto& k : rep.ignored) s += (s.empty() ? "" : ", ") + k;
    say(std::string("oar ") + cmd + ": ignored (no effect on one CPU process): " + s);
  }
  for (const auto& n : rep.notes) say(std::string("oar ") + cmd + ": " + n);
  if (!a.do_train && !a.do_eval && !a.do_predict) {
    say(std::string("oar ") + cmd + ": do_train, do_eval and do_predict are all false: nothing to do (as PaddleNLP)");
    return 0;
  }

  const auto t0 = std::chrono::steady_clock::now();
  // fleet's layout of the ranks: this rank's pipeline stage and share of the data follow from its coordinates.
  const ParallelDegrees degrees{int(a.data_parallel_degree), int(std::max<int64_t>(1, a.pipeline_parallel_degree)),
                                int(std::max<int64_t>(1, a.sharding_parallel_degree)),
                                int(std::max<int64_t>(1, a.tensor_parallel_degree))};
  const ParallelDegrees coords = coordinates_of(degrees, job.rank);
  auto tok = load_tokenizer(a.tokenizer_path());
  auto model = build_train_model(a, *tok, say, coords.pipe, coords.tensor);
  const LlamaConfig& cfg = model->llama().config();
  RunData data = build_run_data(a, *tok, cfg.vocab_size, cfg.max_position_embeddings, dataset_rank(degrees, job.rank),
                                job.comm);
  say("Data: " + data.summary);
  if (a.do_eval && !data.eval) say(std::string("oar ") + cmd + ": warning: no evaluation data: evaluation skipped");
  if (a.do_predict && !data.test) say(std::string("oar ") + cmd + ": no test data (test split or test.json): do_predict skipped");

  TrainerOptions opt;
  opt.tokenizer_path = a.tokenizer_path();
  opt.progress_bar = job.rank == 0;
  opt.print = say;
  ParallelGroups groups;
  if (job.size > 1) {
    // Splitting the world is collective: first make sure that every rank got this far (one that failed alone is
    // waiting in all_ranks_ok, through agree_on_setup).
    std::string first;
    if (!all_ranks_ok(*job.comm, "", &first)) throw OtherRankFailed(first);
    groups = make_parallel_groups(*job.comm, degrees);
    say("Parallel layout: " + describe_layout(degrees, job.rank));
    opt.data_parallel = groups.replicas.get();
    if (groups.pipe) {
      opt.pipeline = groups.pipe.get();
      model->set_pipeline(*groups.pipe);
    }
    if (groups.tensor) {
      opt.tensor = groups.tensor.get();
      model->set_tensor_group(*groups.tensor);
    }
    std::string why;
    opt.overlap_grad_reduce = choose_grad_overlap(groups, a.sharding_stage() == 2, *job.comm, &why);
    if (groups.replicas->size() > 1)
      say(std::string("Gradient sums: ") + (opt.overlap_grad_reduce ? "overlapped with" : "after") + " the backward (" +
          why + ")");
    if (a.sharding_stage() > 0) {
      opt.sharding = groups.sharding.get();
      opt.shard_replicas = groups.data.get();
    }
  }
  Trainer trainer(a, *model, data.train.get(), data.eval.get(), data.test.get(), opt);
  if (job.size > 1 && !agree_on_setup(job, "")) return 2;
  TrainResult r = trainer.run();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string done = std::string("oar ") + cmd + ": done in " + std::to_string(int64_t(secs + 0.5)) + " s";
  if (a.do_train && !a.benchmark) {
    const char* adapter = a.save_format == "paddle" ? " (PaddleNLP LoRA checkpoint: oar predict --lora_path)"
                                                    : " (PEFT adapter: oar predict --lora_path)";
    done += "; model in " + a.output_dir + (model->llama().has_lora() ? adapter : "") + " after " +
            std::to_string(r.global_step) + " steps";
  }
  if (job.size > 1) done += "; " + std::to_string(job.size) + " ranks, logs in " + a.log_dir;
  if (a.do_train || a.do_eval)
    done += "; metrics in " + join_path(a.output_dir, "metrics.jsonl") + "; loss curve in " +
            join_path(a.output_dir, "loss_curve.svg");
  say(done);
  return 0;
}

// PaddleNLP's run_finetune.py runs PTQ instead of training when the argument file sets do_ptq.
bool sets_do_ptq(const std::vector<std::string>& args) {
  if (args.empty() || args[0].size() < 5 || args[0].compare(args[0].size() - 5, 5, ".json") != 0) return false;
  if (!file_exists(args[0])) return false;  // the trainer names the missing file
  const nlohmann::json j = parse_json_file(args[0]);
  if (!j.is_object() || !j.contains("do_ptq")) return false;
  return json_truthy(j["do_ptq"]);  // whatever the trainer would refuse as a do_ptq that is set
}

Action add_training_command(CLI::App& app, TrainMode mode) {
  // Every argument after the sub-command is ours: PaddleNLP's keys are many and open-ended.
  app.allow_extras();
  app.prefix_command();
  app.set_help_flag();
  app.footer(train_args_help(mode));
  CLI::App* sub = &app;
  return [sub, mode]() -> int {
    const std::vector<std::string> args = sub->remaining();
    if (mode == TrainMode::Finetune && sets_do_ptq(args)) {
      if (args.size() != 1) throw Error("do_ptq: pass every setting in the JSON file (no command-line overrides)");
      return run_ptq(args[0]);
    }
    return run_training(mode, args);
  };
}

}  // namespace

Action add_finetune(CLI::App& app) { return add_training_command(app, TrainMode::Finetune); }
Action add_pretrain(CLI::App& app) { return add_training_command(app, TrainMode::Pretrain); }

}  // namespace oar::cli
