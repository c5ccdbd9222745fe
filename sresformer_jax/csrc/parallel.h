// Parallel tasks on XLA's intra-op thread pool, shared by the CPU kernels (event_conv.cc, batch_norm.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace sresformer {

namespace ffi = xla::ffi;

// Parallel tasks on XLA's intra-op pool.  Every worker (the calling thread included) takes tasks from a
// shared counter, so the caller never waits for a worker that has not started: no deadlock even when
// the pool is busy.  A worker that starts after the last task was taken returns without touching `f`.
template <typename F>
void run_tasks(ffi::ThreadPool& pool, int64_t ntasks, int64_t nworkers, const F& f) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto st = std::make_shared<State>();
  const F* fp = &f;
  auto work = [st, ntasks, fp](int64_t worker) {
    int64_t t, count = 0;
    while ((t = st->next.fetch_add(1)) < ntasks) {
      (*fp)(worker, t);
      ++count;
    }
    if (count) st->done.fetch_add(count);
  };
  for (int64_t w = 1; w < nworkers; ++w) pool.Schedule([work, w] { work(w); });
  work(0);
  while (st->done.load() < ntasks) std::this_thread::yield();
}

// The calling thread is one of XLA's pool threads: as many workers as the pool has threads.
inline int64_t workers(ffi::ThreadPool& pool, int64_t ntasks) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads() + 1, ntasks));
}

}  // namespace sresformer
