// `oar serve`: the OpenAI-compatible HTTP server (src/server) over the serving engine (src/engine).
// SIGTERM or SIGINT: stop admitting (new requests get 503), finish what is running, exit 0; a second signal
// aborts what is still running (finish_reason "abort"), then exits 0 as well.
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <thread>

#include "chat/chat_template.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "core/dtype.h"
#include "core/error.h"
#include "engine/engine.h"
#include "server/engine_loop.h"
#include "server/http_server.h"

namespace oar::cli {
namespace {

struct ServeArgs {
  std::string model, tokenizer, dtype, quant_type, host = "127.0.0.1", served_model_name;
  int port = 8000;
  int64_t group_size = -1;  // --weightonly_group_size
  int64_t block_size = 64, max_num_seqs = 16, max_num_batched_tokens = 2048, max_waiting = 1024;
  double kv_cache_memory_gb = 1.0;
  bool no_prefix_caching = false, log_requests = false;
  std::string cachekv_int8, cachekv_int8_type, cachekv_scales_path;
  int64_t http_threads = 0, max_connections = 1024;
  double header_timeout = 10, body_timeout = 60;
  std::string api_key;
};

// Room for --max_connections sockets: the soft limit on open files is often 1024.
void raise_open_file_limit(int64_t want) {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY || rlim_t(want) <= r.rlim_cur) return;
  r.rlim_cur = r.rlim_max == RLIM_INFINITY ? rlim_t(want) : std::min<rlim_t>(rlim_t(want), r.rlim_max);
  setrlimit(RLIMIT_NOFILE, &r);
}

// The name clients pass as "model": the model directory's (or file's) last path component by default.
std::string default_model_name(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Fails fast, before minutes of model loading, when the address is taken or cannot be bound.
void check_address(const std::string& host, int port) {
  if (port == 0) return;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return;  // a name or IPv6: httplib resolves it later
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return;
  int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int err = errno;
  close(fd);
  if (rc != 0)
    throw Error("--host " + host + " --port " + std::to_string(port) + ": cannot listen there (" + std::strerror(err) + ")");
}

// SIGINT and SIGTERM are blocked in every thread (threads started later inherit the mask) and taken by one
// watcher thread with sigwait, so no handler ever runs in the middle of a step. While the model loads a signal
// ends the process at once (there is nothing to drain); once serving, signals are queued for the main thread.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&sigs_);
    sigaddset(&sigs_, SIGINT);
    sigaddset(&sigs_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs_, nullptr);
    // Never freed: the detached thread may outlive main's stack frame.
    State* st = new State;
    st_ = st;
    std::thread([st, sigs = sigs_] {
      for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0) continue;
        std::lock_guard lk(st->m);
        if (!st->serving) {
          std::fprintf(stderr, "oar serve: %s while starting: exiting\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
          std::_Exit(128 + sig);
        }
        st->pending.push_back(sig);
        st->cv.notify_all();
      }
    }).detach();
  }
  void serving() {
    std::lock_guard lk(st_->m);
    st_->serving = true;
  }
  // The next signal, waiting up to `timeout` (forever when negative); 0 when none came.
  int wait(std::chrono::milliseconds timeout) {
    std::unique_lock lk(st_->m);
    auto ready = [&] { return !st_->pending.empty(); };
    if (timeout.count() < 0) st_->cv.wait(lk, ready);
    else if (!st_->cv.wait_for(lk, timeout, ready)) return 0;
    int sig = st_->pending.front();
    st_->pending.pop_front();
    return sig;
  }

 private:
  struct State {
    std::mutex m;
    std::condition_variable cv;
    std::deque<int> pending;
    bool serving = false;
  };
  sigset_t sigs_;
  State* st_;
};

}  // namespace

Action add_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  app.add_option("--model_name_or_path", a->model, "Hugging Face directory or llama2.c checkpoint")->required();
  app.add_option("--tokenizer_name_or_path", a->tokenizer, "tokenizer file or directory (default: beside the model)");
  app.add_option("--dtype", a->dtype, "float32, bfloat16 or float16 (default: bfloat16 for 16-bit checkpoints, else float32)");
  app.add_option("--quant_type", a->quant_type, kQuantTypeHelp);
  app.add_option("--weightonly_group_size", a->group_size, "weight_only_int4's group: -1 (per channel), 64 or 128");
  app.add_option("--host", a->host, "address to listen on");
  app.add_option("--port", a->port, "port to listen on (0: any free port, printed at start)")->check(ints(0, 65535));
  app.add_option("--served_model_name", a->served_model_name, "the model name clients use (default: the directory's name)");
  CLI::Option* block_size_opt =
      app.add_option("--block_size", a->block_size, "KV cache block size in positions")->check(positive_int());
  app.add_option("--kv_cache_memory_gb", a->kv_cache_memory_gb, "memory budget of the KV cache, GiB")->check(positive_real());
  app.add_option("--max_num_seqs", a->max_num_seqs, "requests running at once")->check(positive_int());
  app.add_option("--max_num_batched_tokens", a->max_num_batched_tokens, "tokens per engine step (prefill chunks + decodes)")
      ->check(positive_int());
  CLI::Option* int8_opt = app.add_option("--cachekv_int8", a->cachekv_int8,
      "int8 KV cache: bare or true = dynamic scales; also dynamic|static")->expected(0, 1);
  app.add_option("--cachekv_int8_type", a->cachekv_int8_type, "dynamic (per token and head) or static (cachekv_scales.json)");
  app.add_option("--cachekv_scales,--cachekv_scales_path", a->cachekv_scales_path,
                 "static int8 scales (default: cachekv_scales.json in the model directory)");
  app.add_flag("--no_prefix_caching", a->no_prefix_caching, "do not share KV blocks between identical prompt prefixes");
  app.add_option("--max_waiting", a->max_waiting, "requests queued at most; more get 429")->check(non_negative_int());
  app.add_option("--http_threads", a->http_threads, "requests answered at once (default: max_num_seqs + max_waiting, 64..512)")
      ->check(non_negative_int());
  app.add_option("--max_connections", a->max_connections,
                 "open connections at most; more get 503 (or close one that has waited 1 s on its client)")
      ->check(positive_int());
  app.add_option("--header_timeout", a->header_timeout, "seconds a request line and headers may take to arrive (408 after)")
      ->check(positive_real());
  app.add_option("--body_timeout", a->body_timeout, "seconds a request body may take to arrive (408 after)")
      ->check(positive_real());
  app.add_option("--api_key", a->api_key,
                 "require 'Authorization: Bearer KEY' on every route but /health (401 otherwise)")
      ->envname("OAR_API_KEY");
  app.add_flag("--log_requests", a->log_requests, "log every HTTP request on stderr");
  return [a, int8_opt, block_size_opt]() -> int {
    SignalWatcher signals;  // first: before any thread exists
    match_export_flags(*a, int8_opt->count() > 0);  // an export runs with its own flags
    match_export_block_size(a->model, block_size_opt->count() > 0, a->block_size);

    EngineConfig ec;
    ec.block_size = a->block_size;
    ec.kv_cache_memory_bytes = size_t(a->kv_cache_memory_gb * double(size_t(1) << 30));
    ec.max_num_seqs = a->max_num_seqs;
    ec.max_num_batched_tokens = a->max_num_batched_tokens;
    ec.enable_prefix_caching = !a->no_prefix_caching;
    ec.max_waiting = a->max_waiting;
    ec.kv_dtype = parse_cachekv_int8(int8_opt->count() > 0, a->cachekv_int8, a->cachekv_int8_type, a->quant_type);
    if (ec.kv_dtype != KVCacheDType::F32)
      ec.cachekv_scales_path = cachekv_scales_path_for(a->model, a->cachekv_scales_path);
    check_address(a->host, a->port);

    LoadedModel lm = load_model_and_tokenizer(a->model, a->tokenizer, a->dtype, "", a->quant_type, a->group_size);
    const Tokenizer& tok = *lm.tokenizer;
    // An unsupported template is an error now, not at the first chat request.
    ChatTemplate chat = ChatTemplate::for_tokenizer(tok);
    Engine engine(*lm.model, tok, ec);
    server::EngineAdapter backend(engine);
    server::EngineLoop loop(backend);

    server::ServerOptions so;
    so.host = a->host;
    so.port = a->port;
    so.served_model_name = a->served_model_name.empty() ? default_model_name(a->model) : a->served_model_name;
    so.context_length = lm.model->max_positions();
    so.vocab_size = lm.model->config().vocab_size;
    so.http_threads = a->http_threads > 0 ? size_t(a->http_threads)
                                          : size_t(std::clamp<int64_t>(a->max_num_seqs + a->max_waiting + 8, 64, 512));
    so.log_requests = a->log_requests;
    so.max_connections = size_t(a->max_connections);
    so.header_timeout = std::chrono::milliseconds(int64_t(a->header_timeout * 1000));
    so.body_timeout = std::chrono::milliseconds(int64_t(a->body_timeout * 1000));
    so.api_key = a->api_key;
    raise_open_file_limit(a->max_connections + int64_t(so.http_threads) + 256);
    server::HttpServer http(loop, tok, &chat, so);
    const int port = http.bind();
    http.start();
    const EngineMetrics m = engine.metrics();
    std::printf("oar serve: model '%s' (context %lld, %lld KV blocks of %lld positions, %s), %s\n",
                so.served_model_name.c_str(), (long long)so.context_length, (long long)m.blocks_total,
                (long long)engine.config().block_size, dtype_name(lm.model->dtype()), chat.origin().c_str());
    std::printf("oar serve: listening on http://%s:%d%s\n", a->host.c_str(), port,
                a->api_key.empty() ? "" : " (API key required)");
    std::fflush(stdout);

    signals.serving();
    int sig = signals.wait(std::chrono::milliseconds(-1));
    std::fprintf(stderr, "oar serve: %s: draining (new requests get 503; signal again to abort running ones)\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
    http.begin_drain();
    bool aborted = false;
    while (http.in_flight() > 0) {
      if (signals.wait(std::chrono::milliseconds(100)) != 0 && !aborted) {
        std::fprintf(stderr, "oar serve: aborting %lld running requests\n", (long long)http.in_flight());
        loop.cancel_all();
        http.abort_renders();
        aborted = true;
      }
    }
    http.stop();
    loop.stop();
    std::fprintf(stderr, "oar serve: stopped\n");
    return 0;
  };
}

}  // namespace oar::cli
