// BatchNorm's per-channel batch statistics on the CPU: XLA FFI handlers.
//
// x and dy are [M, C] (every axis but the channels flattened into M rows).
//
//   BatchNormStats:      μ[c] = Σ_m x[m, c] / M,   σ²[c] = Σ_m (x[m, c] − μ[c])² / M        (two passes, biased)
//   BatchNormGradStats:  Σdy[c] = Σ_m dy[m, c],    Σdy·x̃[c] = Σ_m dy[m, c]·(x[m, c] − μ[c])
//
// XLA:CPU hands reductions to YNNPACK, which wants its input materialised: the variance wrote x − μ in full
// and the backward wrote dy·(x − μ), both as large as the activation.  Here each statistic reads its inputs
// once and writes C numbers.  Rows are summed in chunks of 256 in the input type, the chunk sums in double;
// chunks are dealt to a fixed number of contiguous slot ranges summed in slot order (deterministic).
// Types: float32 or float64, results in the input type.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "registry.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using sresformer::sum_over_tasks;
using sresformer::workers;

// out[k·C + c] = Σ_rows of row(m, acc) with acc [K·C] in T (per chunk of 256 rows) and out in double.
template <typename T, int K, typename Row>
void reduce_rows(ffi::ThreadPool& pool, int64_t rows, int64_t c, const Row& row, std::vector<double>& out) {
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (rows + kChunk - 1) / kChunk, nw = workers(pool, chunks);
  std::vector<std::vector<T>> acc(nw, std::vector<T>(K * c));
  out.resize(K * c);
  sum_over_tasks(pool, chunks, nw, K * c, out.data(), [&](int64_t w, int64_t t, double* part) {
    std::fill(acc[w].begin(), acc[w].end(), T(0));
    for (int64_t m = t * kChunk; m < std::min(rows, (t + 1) * kChunk); ++m) row(m, acc[w].data());
    for (int64_t i = 0; i < K * c; ++i) part[i] += acc[w][i];
  });
}

ffi::Error rows_and_channels(ffi::Span<const int64_t> dims, int64_t* rows, int64_t* c) {
  if (dims.size() == 0) return ffi::Error::InvalidArgument("batch_norm: x must have a channel axis");
  *c = dims.back();
  *rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) *rows *= dims[i];
  if (*rows < 1 || *c < 1) return ffi::Error::InvalidArgument("batch_norm: empty input");
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error BatchNormStats(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::ResultBuffer<D> mean,
                          ffi::ResultBuffer<D> var) {
  using T = ffi::NativeType<D>;
  int64_t rows, c;
  if (auto err = rows_and_channels(x.dimensions(), &rows, &c); err.failure()) return err;
  if (mean->element_count() != static_cast<size_t>(c) || var->element_count() != static_cast<size_t>(c))
    return ffi::Error::InvalidArgument("batch_norm: statistics must have one entry per channel");
  const T* xp = x.typed_data();
  std::vector<double> sum, sq;
  reduce_rows<T, 1>(pool, rows, c, [&](int64_t m, T* __restrict acc) {
    const T* __restrict r = xp + m * c;
    for (int64_t j = 0; j < c; ++j) acc[j] += r[j];
  }, sum);
  std::vector<T> mu(c);
  for (int64_t j = 0; j < c; ++j) mu[j] = static_cast<T>(sum[j] / static_cast<double>(rows));
  const T* mup = mu.data();
  reduce_rows<T, 1>(pool, rows, c, [&](int64_t m, T* __restrict acc) {
    const T* __restrict r = xp + m * c;
    for (int64_t j = 0; j < c; ++j) {
      const T d = r[j] - mup[j];
      acc[j] += d * d;
    }
  }, sq);
  for (int64_t j = 0; j < c; ++j) {
    mean->typed_data()[j] = mu[j];
    var->typed_data()[j] = static_cast<T>(sq[j] / static_cast<double>(rows));
  }
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error BatchNormGradStats(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> dy, ffi::Buffer<D> mean,
                              ffi::ResultBuffer<D> sum_dy, ffi::ResultBuffer<D> sum_dy_xc) {
  using T = ffi::NativeType<D>;
  int64_t rows, c;
  if (auto err = rows_and_channels(x.dimensions(), &rows, &c); err.failure()) return err;
  if (dy.element_count() != x.element_count() || mean.element_count() != static_cast<size_t>(c) ||
      sum_dy->element_count() != static_cast<size_t>(c) || sum_dy_xc->element_count() != static_cast<size_t>(c))
    return ffi::Error::InvalidArgument("batch_norm: dy must match x, and mean have one entry per channel");
  const T *xp = x.typed_data(), *dyp = dy.typed_data(), *mup = mean.typed_data();
  std::vector<double> sums;
  reduce_rows<T, 2>(pool, rows, c, [&](int64_t m, T* __restrict acc) {
    const T* __restrict r = xp + m * c;
    const T* __restrict g = dyp + m * c;
    T* __restrict a1 = acc + c;
    for (int64_t j = 0; j < c; ++j) {
      acc[j] += g[j];
      a1[j] += g[j] * (r[j] - mup[j]);
    }
  }, sums);
  for (int64_t j = 0; j < c; ++j) {
    sum_dy->typed_data()[j] = static_cast<T>(sums[j]);
    sum_dy_xc->typed_data()[j] = static_cast<T>(sums[c + j]);
  }
  return ffi::Error::Success();
}

}  // namespace

#define STATS_HANDLERS(SUFFIX, D)                                        \
  SRESFORMER_HANDLER(BatchNormStats##SUFFIX, BatchNormStats<D>,          \
                     ffi::Ffi::Bind()                                    \
                         .Ctx<ffi::ThreadPool>()                         \
                         .Arg<ffi::Buffer<D>>()                          \
                         .Ret<ffi::Buffer<D>>()                          \
                         .Ret<ffi::Buffer<D>>());                        \
  SRESFORMER_HANDLER(BatchNormGradStats##SUFFIX, BatchNormGradStats<D>,  \
                     ffi::Ffi::Bind()                                    \
                         .Ctx<ffi::ThreadPool>()                         \
                         .Arg<ffi::Buffer<D>>()                          \
                         .Arg<ffi::Buffer<D>>()                          \
                         .Arg<ffi::Buffer<D>>()                          \
                         .Ret<ffi::Buffer<D>>()                          \
                         .Ret<ffi::Buffer<D>>())

STATS_HANDLERS(F32, ffi::F32);
STATS_HANDLERS(F64, ffi::F64);
