// Parallel tasks on XLA's intra-op thread pool, shared by the CPU kernels (event_conv.cc, batch_norm.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

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

// A deterministic parallel sum: tasks [0, ntasks) are dealt in min(ntasks, nworkers) fixed contiguous
// ranges; range s runs f(worker, task, part) for its tasks in order, accumulating into its own zeroed
// partial `part` of `size` values, and out = the partials summed in range order.  The result does not
// depend on which worker ran which range.
template <typename T, typename F>
void sum_over_tasks(ffi::ThreadPool& pool, int64_t ntasks, int64_t nworkers, size_t size, T* out, const F& f) {
  const int64_t nslots = std::max<int64_t>(1, std::min(ntasks, nworkers));
  std::vector<std::vector<T>> partial(nslots);
  run_tasks(pool, nslots, nworkers, [&](int64_t worker, int64_t slot) {
    partial[slot].assign(size, T(0));
    for (int64_t t = slot * ntasks / nslots; t < (slot + 1) * ntasks / nslots; ++t)
      f(worker, t, partial[slot].data());
  });
  std::fill(out, out + size, T(0));
  for (const auto& part : partial)
    if (!part.empty())
      for (size_t i = 0; i < size; ++i) out[i] += part[i];
}

}  // namespace sresformer
