// The bridge between HTTP handler threads and the engine. One loop thread owns the engine: it alone calls
// add_request, abort_request and step. Handlers hand it submissions through a queue and wait on their own
// RequestGroup (a mutex, a condition variable and the outputs of their engine requests), so each response gets
// exactly its own tokens however many requests run at once.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"

namespace oar::server {

// What the loop needs of an engine; the real one is EngineAdapter, the tests also use a fake.
class EngineBackend {
 public:
  virtual ~EngineBackend() = default;
  virtual uint64_t add_request(std::vector<int32_t> prompt, const RequestParams& params) = 0;
  virtual void abort_request(uint64_t id) = 0;
  virtual bool has_work() const = 0;
  virtual std::vector<RequestOutput> step() = 0;
  virtual EngineMetrics metrics() const = 0;
  virtual void take_latency_samples(std::vector<double>& ttft, std::vector<double>& tpot) = 0;
};

class EngineAdapter final : public EngineBackend {
 public:
  explicit EngineAdapter(Engine& e) : e_(e) {}
  uint64_t add_request(std::vector<int32_t> prompt, const RequestParams& params) override {
    return e_.add_request(std::move(prompt), params);
  }
  void abort_request(uint64_t id) override { e_.abort_request(id); }
  bool has_work() const override { return e_.has_work(); }
  std::vector<RequestOutput> step() override { return e_.step(); }
  EngineMetrics metrics() const override { return e_.metrics(); }
  void take_latency_samples(std::vector<double>& ttft, std::vector<double>& tpot) override {
    e_.take_latency_samples(ttft, tpot);
  }

 private:
  Engine& e_;
};

// Prometheus-style histogram: cumulative buckets by upper bound, plus sum and count.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket (not cumulative); one more than bounds: the +Inf bucket
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v);
};

struct LoopMetrics {
  EngineMetrics engine;  // as of the last step (without latency samples)
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
  Histogram tpot{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}};
  int64_t requests_finished = 0;       // finished with a result (stop, length)
  int64_t requests_aborted = 0;        // cancelled: client gone, or server stopping
  int64_t requests_rejected_full = 0;  // refused because the waiting queue was full
  int64_t steps = 0;
};

// The engine requests of one HTTP request (one per prompt), as its handler sees them.
class RequestGroup {
 public:
  enum class Admission { Pending, Accepted, QueueFull, Invalid, Stopped };
  struct Event {
    size_t index;  // which prompt
    RequestOutput out;
  };

  // Blocks until the loop thread has queued (or refused) every request of the group.
  Admission wait_admission();
  const std::string& error() const { return error_; }  // why, for Invalid
  // Waits up to `timeout` for outputs and moves them into `events`. Returns false once every request has
  // finished and all its outputs were taken.
  bool wait_events(std::vector<Event>& events, std::chrono::milliseconds timeout);
  bool finished();
  size_t size() const { return subs_.size(); }

 private:
  friend class EngineLoop;
  struct Sub {
    std::vector<int32_t> prompt;
    RequestParams params;
    size_t same_prompt_as = SIZE_MAX;
    uint64_t id = 0;
    bool finished = false;
  };
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Sub> subs_;
  Admission admission_ = Admission::Pending;
  std::string error_;
  std::vector<Event> events_;
  size_t unfinished_ = 0;
};

class EngineLoop {
 public:
  explicit EngineLoop(EngineBackend& backend);
  ~EngineLoop();  // stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  struct Submission {
    std::vector<int32_t> prompt;
    RequestParams params;
    // Index of an earlier submission of the group with the same prompt (n > 1): this one shares its prompt
    // (RequestParams::share_prompt_with); SIZE_MAX: none.
    size_t same_prompt_as = SIZE_MAX;
  };
  // Queues the requests of one HTTP request for the loop thread; all are admitted or none.
  std::shared_ptr<RequestGroup> submit(std::vector<Submission> subs);
  // Aborts what is unfinished of the group (a client went away): the engine frees its blocks at the next step.
  void cancel(const std::shared_ptr<RequestGroup>& g);
  // Aborts every running request (a second shutdown signal).
  void cancel_all();
  // Aborts what is left and joins the loop thread. New submissions are refused (Stopped) from then on.
  void stop();

  LoopMetrics metrics() const;

 private:
  void run();
  void admit(const std::shared_ptr<RequestGroup>& g);
  void abort_group(RequestGroup& g, bool count);
  struct Delivery {
    std::shared_ptr<RequestGroup> group;
    size_t index;
    RequestOutput out;
  };
  std::vector<Delivery> route(std::vector<RequestOutput>& outs);  // counts, and says whose outputs they are
  void deliver(std::vector<Delivery>& del);

  EngineBackend& backend_;
  mutable std::mutex mu_;  // guards the inbox, the cancel list, stopping_ and published_
  std::condition_variable cv_;
  std::vector<std::shared_ptr<RequestGroup>> inbox_, cancels_;
  bool cancel_all_ = false;
  bool stopping_ = false;
  bool started_ = false;  // the first metrics are published
  LoopMetrics published_;
  std::thread thread_;

  // Loop-thread state.
  struct Live {
    std::shared_ptr<RequestGroup> group;
    size_t index;
  };
  std::unordered_map<uint64_t, Live> live_;
  LoopMetrics m_;
};

}  // namespace oar::server
