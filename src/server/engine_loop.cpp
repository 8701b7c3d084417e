#include "server/engine_loop.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"

namespace oar::server {

void Histogram::observe(double v) {
  size_t b = size_t(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());  // le= is inclusive
  counts[b]++;
  sum += v;
  count++;
}

RequestGroup::Admission RequestGroup::wait_admission() {
  std::unique_lock lk(m_);
  cv_.wait(lk, [&] { return admission_ != Admission::Pending; });
  return admission_;
}

bool RequestGroup::wait_events(std::vector<Event>& events, std::chrono::milliseconds timeout) {
  std::unique_lock lk(m_);
  cv_.wait_for(lk, timeout, [&] { return !events_.empty() || unfinished_ == 0; });
  for (auto& e : events_) events.push_back(std::move(e));
  events_.clear();
  return unfinished_ > 0 || !events.empty();
}

bool RequestGroup::finished() {
  std::lock_guard lk(m_);
  return unfinished_ == 0 && admission_ != Admission::Pending;
}

EngineLoop::EngineLoop(EngineBackend& backend) : backend_(backend) {
  published_ = m_;
  thread_ = std::thread([this] { run(); });
  // /metrics shows the engine's capacity (KV blocks) from the start, not zeros until the first step.
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return started_; });
}

EngineLoop::~EngineLoop() { stop(); }

std::shared_ptr<RequestGroup> EngineLoop::submit(std::vector<Submission> subs) {
  auto g = std::make_shared<RequestGroup>();
  for (auto& s : subs) g->subs_.push_back({std::move(s.prompt), s.params, s.same_prompt_as, 0, false});
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      inbox_.push_back(g);
      cv_.notify_one();
      return g;
    }
  }
  std::lock_guard glk(g->m_);
  g->admission_ = RequestGroup::Admission::Stopped;
  return g;
}

void EngineLoop::cancel(const std::shared_ptr<RequestGroup>& g) {
  std::lock_guard lk(mu_);
  cancels_.push_back(g);
  cv_.notify_one();
}

void EngineLoop::cancel_all() {
  std::lock_guard lk(mu_);
  cancel_all_ = true;
  cv_.notify_one();
}

void EngineLoop::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

LoopMetrics EngineLoop::metrics() const {
  std::lock_guard lk(mu_);
  return published_;
}

void EngineLoop::admit(const std::shared_ptr<RequestGroup>& g) {
  RequestGroup& G = *g;
  RequestGroup::Admission result = RequestGroup::Admission::Accepted;
  std::string error;
  std::vector<uint64_t> ids;
  // subs_ is only read here, on the loop thread, before the handler may look at it again.
  for (auto& s : G.subs_) {
    uint64_t id = 0;
    if (s.same_prompt_as < G.subs_.size() && G.subs_[s.same_prompt_as].id != 0)
      s.params.share_prompt_with = G.subs_[s.same_prompt_as].id;
    try {
      id = backend_.add_request(std::move(s.prompt), s.params);
    } catch (const Error& e) {
      result = RequestGroup::Admission::Invalid;
      error = e.what();
      break;
    }
    if (id == 0) {
      result = RequestGroup::Admission::QueueFull;
      break;
    }
    s.id = id;
    ids.push_back(id);
  }
  if (result != RequestGroup::Admission::Accepted) {
    for (uint64_t id : ids) backend_.abort_request(id);  // all or nothing
    if (result == RequestGroup::Admission::QueueFull) m_.requests_rejected_full++;
  } else {
    for (size_t i = 0; i < G.subs_.size(); i++) live_[G.subs_[i].id] = {g, i};
  }
  std::lock_guard lk(G.m_);
  G.admission_ = result;
  G.error_ = error;
  G.unfinished_ = result == RequestGroup::Admission::Accepted ? G.subs_.size() : 0;
  G.cv_.notify_all();
}

void EngineLoop::abort_group(RequestGroup& g, bool count) {
  std::lock_guard lk(g.m_);
  for (size_t i = 0; i < g.subs_.size(); i++) {
    auto& s = g.subs_[i];
    if (s.finished || g.admission_ != RequestGroup::Admission::Accepted) continue;
    backend_.abort_request(s.id);
    live_.erase(s.id);  // later outputs for this id (the engine's "aborted" one) are dropped
    s.finished = true;
    g.unfinished_--;
    RequestOutput o;
    o.request_id = s.id;
    o.finished = true;
    o.finish_reason = FinishReason::Aborted;
    g.events_.push_back({i, std::move(o)});
    if (count) m_.requests_aborted++;
  }
  g.cv_.notify_all();
}

std::vector<EngineLoop::Delivery> EngineLoop::route(std::vector<RequestOutput>& outs) {
  std::vector<Delivery> del;
  for (auto& o : outs) {
    auto it = live_.find(o.request_id);
    if (it == live_.end()) continue;  // aborted, or refused at admission
    del.push_back({it->second.group, it->second.index, std::move(o)});
    if (del.back().out.finished) {
      live_.erase(it);
      if (del.back().out.finish_reason == FinishReason::Aborted) m_.requests_aborted++;
      else m_.requests_finished++;
    }
  }
  return del;
}

void EngineLoop::deliver(std::vector<Delivery>& del) {
  for (auto& d : del) {
    RequestGroup& g = *d.group;
    std::lock_guard lk(g.m_);
    if (d.out.finished) {
      g.subs_[d.index].finished = true;
      g.unfinished_--;
    }
    g.events_.push_back({d.index, std::move(d.out)});
    g.cv_.notify_all();
  }
}

void EngineLoop::run() {
  std::vector<double> ttft, tpot;
  m_.engine = backend_.metrics();  // on this thread: only the loop thread calls the engine
  m_.engine.ttft_seconds.clear();
  m_.engine.tpot_seconds.clear();
  {
    std::lock_guard lk(mu_);
    published_ = m_;
    started_ = true;
  }
  cv_.notify_all();
  bool stopping = false;
  while (!stopping) {
    std::vector<std::shared_ptr<RequestGroup>> inbox, cancels;
    bool cancel_all = false;
    {
      std::unique_lock lk(mu_);
      if (!backend_.has_work())
        cv_.wait(lk, [&] { return stopping_ || !inbox_.empty() || !cancels_.empty() || cancel_all_; });
      inbox.swap(inbox_);
      cancels.swap(cancels_);
      cancel_all = cancel_all_;
      cancel_all_ = false;
      stopping = stopping_;
    }
    bool aborted = false;
    if (stopping || cancel_all) {
      // Everything still running ends now; handlers see finish_reason "abort".
      std::vector<std::shared_ptr<RequestGroup>> groups;
      for (auto& [id, l] : live_) groups.push_back(l.group);
      for (auto& g : groups) abort_group(*g, true);
      aborted = !groups.empty();
    }
    for (auto& g : inbox) {
      if (stopping) {
        std::lock_guard lk(g->m_);
        g->admission_ = RequestGroup::Admission::Stopped;
        g->cv_.notify_all();
      } else {
        admit(g);
      }
    }
    for (auto& g : cancels) {
      abort_group(*g, true);
      aborted = true;
    }
    std::vector<Delivery> del;
    try {
      // After an abort one step runs even if nothing else is scheduled: that is when the engine frees blocks.
      if (backend_.has_work() || aborted) {
        std::vector<RequestOutput> outs = backend_.step();
        m_.steps++;
        del = route(outs);
      }
      backend_.take_latency_samples(ttft, tpot);
      for (double v : ttft) m_.ttft.observe(v);
      for (double v : tpot) m_.tpot.observe(v);
      m_.engine = backend_.metrics();
      m_.engine.ttft_seconds.clear();
      m_.engine.tpot_seconds.clear();
    } catch (const std::exception& e) {
      // An engine failure ends every request it holds (finish_reason "abort") rather than the process.
      std::fprintf(stderr, "oar serve: engine error: %s\n", e.what());
      std::vector<std::shared_ptr<RequestGroup>> groups;
      for (auto& [id, l] : live_) groups.push_back(l.group);
      for (auto& g : groups) abort_group(*g, true);
    }
    {
      // Published before the outputs are handed over, so that a client that has its answer sees it counted.
      std::lock_guard lk(mu_);
      published_ = m_;
    }
    deliver(del);
  }
}

}  // namespace oar::server
