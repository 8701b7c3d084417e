// Runs a body on every rank of an in-process thread group (the Communicator tests and those built on them).
#pragma once
#include <functional>
#include <thread>
#include <vector>

#include "core/communicator.h"

namespace oar {

// Runs body(comm) on one thread per rank of a thread group of `size` (gtest records failures from any thread).
inline void on_ranks(int size, const std::function<void(Communicator&)>& body) {
  auto group = make_thread_group(size);
  std::vector<std::thread> threads;
  for (auto& c : group) threads.emplace_back([&body, &c] { body(*c); });
  for (auto& t : threads) t.join();
}

}  // namespace oar
