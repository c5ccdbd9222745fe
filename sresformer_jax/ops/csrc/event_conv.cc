// Event-driven (zero-skipping) convolution of a spike tensor: XLA FFI handlers for the CPU.
//
// A spiking layer's input is mostly zeros (3–15 % of the entries fire in SpikingResformer), so a
// convolution of it is a sum over its events: for every nonzero input x[n, r, q, c] and every tap (i, j)
// that reads it,
//
//   forward:          y[n, a, b, o]  += x[n, r, q, c] · K[i, j, c mod C/g, o]     for the outputs o of c's group
//   kernel gradient:  dK[i, j, c mod C/g, o] += x[n, r, q, c] · dy[n, a, b, o]
//
// with r = s·a + i − p, q = s·b + j − p (stride s, zero padding p).  The work is proportional to the
// number of events, not to the number of entries; the result equals the dense convolution up to the
// order of the float additions (any input, not only 0/1: a zero is skipped, everything else is used).
// The input gradient dx = conv(dy, K̃) is dense: DenseConvFwd below for the stride-1 k×k convolutions, XLA's
// matmuls for the others (ops/conv.py).
//
// Layouts: x [N, H, W, C] (NHWC), K [kh, kw, C/g, O] (HWIO, PyTorch's grouping), y/dy [N, Ho, Wo, O].
// Types: x and K float32, float64 or bfloat16; y, dy and dK float32 (float64 for float64 inputs).
// Parallel over (image, block of output rows) tasks on XLA's intra-op thread pool; the kernel
// gradient accumulates one partial per fixed range of tasks and sums them in a fixed order
// (deterministic).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "parallel.h"
#include "registry.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using sresformer::run_tasks;
using sresformer::sum_over_tasks;
using sresformer::workers;

// ---------------------------------------------------------------------------------------------------
// Element types: loading as the accumulation type, and what counts as "no event".
template <ffi::DataType D> struct Elem;
template <typename T, ffi::DataType ACC>
struct NativeElem {
  using In = T;
  using Acc = T;
  static constexpr ffi::DataType kAcc = ACC;
  static T load(T v) { return v; }
  static bool nonzero(T v) { return v != T(0); }
};
template <> struct Elem<ffi::F32> : NativeElem<float, ffi::F32> {};
template <> struct Elem<ffi::F64> : NativeElem<double, ffi::F64> {};
template <> struct Elem<ffi::BF16> {
  using In = uint16_t;  // bfloat16 bits
  using Acc = float;
  static constexpr ffi::DataType kAcc = ffi::F32;
  static float load(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static bool nonzero(uint16_t b) { return (b & 0x7fff) != 0; }
};
// Spikes as bytes (``ops.conv2d(..., binary=True)``): the value is the byte (0 or 1 for spikes). Only ever
// the input x; the kernel's type sets the accumulation type.
template <> struct Elem<ffi::U8> {
  using In = uint8_t;
  static float load(uint8_t b) { return b; }
  static bool nonzero(uint8_t b) { return b != 0; }
};

// dst[0:n] += v · src[0:n] (the innermost loop of both kernels).
template <typename A>
inline void axpy(A* __restrict dst, const A* __restrict src, A v, int64_t n) {
  for (int64_t o = 0; o < n; ++o) dst[o] += v * src[o];
}

#if defined(__AVX512F__)
template <>
inline void axpy<float>(float* __restrict dst, const float* __restrict src, float v, int64_t n) {
  const __m512 vv = _mm512_set1_ps(v);
  if (n == 64) {                                  // one SpikingResformer group: four registers
    __m512 d0 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(src), _mm512_loadu_ps(dst));
    __m512 d1 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(src + 16), _mm512_loadu_ps(dst + 16));
    __m512 d2 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(src + 32), _mm512_loadu_ps(dst + 32));
    __m512 d3 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(src + 48), _mm512_loadu_ps(dst + 48));
    _mm512_storeu_ps(dst, d0), _mm512_storeu_ps(dst + 16, d1);
    _mm512_storeu_ps(dst + 32, d2), _mm512_storeu_ps(dst + 48, d3);
    return;
  }
  int64_t o = 0;
  for (; o + 16 <= n; o += 16)
    _mm512_storeu_ps(dst + o, _mm512_fmadd_ps(vv, _mm512_loadu_ps(src + o), _mm512_loadu_ps(dst + o)));
  if (o < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - o)) - 1);
    _mm512_mask_storeu_ps(dst + o, m, _mm512_fmadd_ps(vv, _mm512_maskz_loadu_ps(m, src + o),
                                                      _mm512_maskz_loadu_ps(m, dst + o)));
  }
}
#endif

// ---------------------------------------------------------------------------------------------------
// Shapes.
struct Geometry {
  int64_t n, h, w, c;          // input
  int64_t kh, kw, cg, co;      // kernel: [kh, kw, C/g, O]
  int64_t groups, cgo;         // g, O/g
  int64_t stride, pad, ho, wo; // output [N, Ho, Wo, O]
};

ffi::Error make_geometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> kd, int64_t stride,
                         int64_t pad, Geometry* g) {
  if (xd.size() != 4 || kd.size() != 4)
    return ffi::Error::InvalidArgument("event_conv: x must be [N, H, W, C] and the kernel [kh, kw, C/g, O]");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[2], kd[3], 0, 0, stride, pad, 0, 0};
  if (stride < 1 || pad < 0 || g->cg < 1 || g->c % g->cg)
    return ffi::Error::InvalidArgument("event_conv: C/g = " + std::to_string(g->cg) +
                                       " does not divide C = " + std::to_string(g->c) +
                                       ", or stride < 1 or padding < 0");
  g->groups = g->c / g->cg;
  if (g->co % g->groups)
    return ffi::Error::InvalidArgument("event_conv: groups do not divide the output channels");
  g->cgo = g->co / g->groups;
  g->ho = (g->h + 2 * pad - g->kh) / stride + 1;
  g->wo = (g->w + 2 * pad - g->kw) / stride + 1;
  if (g->ho < 1 || g->wo < 1) return ffi::Error::InvalidArgument("event_conv: empty output");
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------
// Calls f(c) for every c < n with a nonzero px[c], in increasing order.  With AVX-512, 16 (float), 32
// (bfloat16) or 64 (byte) channels are tested at once: at SpikingResformer's firing rates most blocks have no
// event.
template <typename E, typename F>
inline void for_each_nonzero(const typename E::In* px, int64_t n, const F& f) {
  int64_t c = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<typename E::In, float>) {
    for (; c + 16 <= n; c += 16) {
      uint32_t m = _mm512_cmp_ps_mask(_mm512_loadu_ps(px + c), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      for (; m; m &= m - 1) f(c + __builtin_ctz(m));
    }
  } else if constexpr (std::is_same_v<typename E::In, uint16_t>) {
    const __m512i magnitude = _mm512_set1_epi16(0x7fff);
    for (; c + 32 <= n; c += 32) {
      uint32_t m = _mm512_test_epi16_mask(_mm512_loadu_si512(px + c), magnitude);
      for (; m; m &= m - 1) f(c + __builtin_ctz(m));
    }
  } else if constexpr (std::is_same_v<typename E::In, uint8_t>) {
    for (; c + 64 <= n; c += 64) {
      const __m512i v = _mm512_loadu_si512(px + c);
      for (uint64_t m = _mm512_test_epi8_mask(v, v); m; m &= m - 1) f(c + __builtin_ctzll(m));
    }
  }
#endif
  for (; c < n; ++c)
    if (E::nonzero(px[c])) f(c);
}

// The events of a band of input rows of one image: for every pixel and group, the kernel offset
// ((c mod C/g)·O + g·O/g) and the value of each nonzero channel.
template <typename A>
struct Events {
  std::vector<int32_t> start;           // [rows·W·g + 1]: events of pixel p, group k from start[p·g + k]
  std::vector<int32_t> koff;
  std::vector<A> val;

  template <typename E>
  void build(const typename E::In* x, const Geometry& g, int64_t img, int64_t r0, int64_t r1) {
    const size_t pixels = static_cast<size_t>((r1 - r0) * g.w), most = pixels * static_cast<size_t>(g.c);
    if (start.size() < pixels * g.groups + 1) start.resize(pixels * g.groups + 1);
    if (val.size() < most) koff.resize(most), val.resize(most);   // grows only
    int32_t* st = start.data();
    int32_t* ko = koff.data();
    A* va = val.data();
    int32_t count = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t q = 0; q < g.w; ++q) {
        const typename E::In* px = x + ((img * g.h + r) * g.w + q) * g.c;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          *st++ = count;
          const typename E::In* pg = px + grp * g.cg;
          const int32_t group_out = static_cast<int32_t>(grp * g.cgo);
          for_each_nonzero<E>(pg, g.cg, [&](int64_t c) {
            ko[count] = static_cast<int32_t>(c * g.co) + group_out;
            va[count] = static_cast<A>(E::load(pg[c]));
            ++count;
          });
        }
      }
    *st = count;
  }
};

// Up to 64 output channels accumulated in registers (forward kernel): zero, then fma(v, K row) per event,
// then store.  `width` ≤ 64 channels are live (masked beyond).
template <typename A>
struct Tile {
  A r[64];
  int64_t width;
  explicit Tile(int64_t w) : width(w) { std::fill(r, r + w, A(0)); }
  void fma(A v, const A* __restrict src) {
    for (int64_t o = 0; o < width; ++o) r[o] += v * src[o];
  }
  void store(A* dst) const { std::copy(r, r + width, dst); }
};

#if defined(__AVX512F__)
// The lane masks of `count` 16-lane registers whose first `width` channels are live (a 64-channel tile: 4).
inline void tile_masks(int64_t width, __mmask16* m, int count = 4) {
  for (int k = 0; k < count; ++k) {
    const int64_t n = std::clamp<int64_t>(width - 16 * k, 0, 16);
    m[k] = static_cast<__mmask16>(n == 16 ? 0xFFFF : (1u << n) - 1);
  }
}

// A block of six output rows × 64 channels in 24 accumulator registers r<p><z>, local variables so that they
// stay in registers (the direct and the Winograd kernels): BLOCK_ZERO declares them; BLOCK_FMA(VALUE) adds
// VALUE(p) · (k0 k1 k2 k3), a 64-wide kernel row in four registers, to row p for p < 6.
#define BLOCK_ZERO4(p) __m512 r##p##0 = _mm512_setzero_ps(), r##p##1 = r##p##0, r##p##2 = r##p##0, r##p##3 = r##p##0;
#define BLOCK_ZERO BLOCK_ZERO4(0) BLOCK_ZERO4(1) BLOCK_ZERO4(2) BLOCK_ZERO4(3) BLOCK_ZERO4(4) BLOCK_ZERO4(5)
#define BLOCK_FMA4(p, VALUE)                      \
  {                                               \
    const __m512 b = _mm512_set1_ps(VALUE(p));    \
    r##p##0 = _mm512_fmadd_ps(b, k0, r##p##0);    \
    r##p##1 = _mm512_fmadd_ps(b, k1, r##p##1);    \
    r##p##2 = _mm512_fmadd_ps(b, k2, r##p##2);    \
    r##p##3 = _mm512_fmadd_ps(b, k3, r##p##3);    \
  }
#define BLOCK_FMA(VALUE)                                                                          \
  BLOCK_FMA4(0, VALUE) BLOCK_FMA4(1, VALUE) BLOCK_FMA4(2, VALUE) BLOCK_FMA4(3, VALUE) BLOCK_FMA4(4, VALUE) \
  BLOCK_FMA4(5, VALUE)

template <>
struct Tile<float> {
  __m512 r[4];
  __mmask16 m[4];
  explicit Tile(int64_t w) {
    tile_masks(w, m);
    for (int k = 0; k < 4; ++k) r[k] = _mm512_setzero_ps();
  }
  void fma(float v, const float* src) {
    const __m512 vv = _mm512_set1_ps(v);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) r[k] = _mm512_fmadd_ps(vv, _mm512_maskz_loadu_ps(m[k], src + 16 * k), r[k]);
  }
  void store(float* dst) const {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) _mm512_mask_storeu_ps(dst + 16 * k, m[k], r[k]);
  }
};
#endif

#if defined(__AVX512F__)
template <typename A>
constexpr bool kAvx512Float = std::is_same_v<A, float>;
#else
template <typename A>
constexpr bool kAvx512Float = false;
#endif

// acc[0:width] += v · row[0:width], width ≤ 256 (sixteen float32 registers): the rows of kernel_grad_lists.
template <typename A>
struct RowAcc {
  static constexpr int64_t kMax = 256;
  A r[kMax];
  int64_t width;
  explicit RowAcc(int64_t w) : width(w) { std::fill(r, r + w, A(0)); }
  void fma(A v, const A* __restrict row) {
    for (int64_t o = 0; o < width; ++o) r[o] += v * row[o];
  }
  void add_to(A* __restrict dst) const {
    for (int64_t o = 0; o < width; ++o) dst[o] += r[o];
  }
};

#if defined(__AVX512F__)
template <>
struct RowAcc<float> {
  static constexpr int64_t kMax = 256;
  __m512 r[16];
  __mmask16 m[16];
  int nz;  // registers in use (4, 8 or 16)
  explicit RowAcc(int64_t w) : nz(w <= 64 ? 4 : w <= 128 ? 8 : 16) {
    tile_masks(w, m, nz);
    for (int k = 0; k < nz; ++k) r[k] = _mm512_setzero_ps();
  }
  template <int NZ>
  void fma_n(float v, const float* row) {
    const __m512 vv = _mm512_set1_ps(v);
#pragma GCC unroll 16
    for (int k = 0; k < NZ; ++k) r[k] = _mm512_fmadd_ps(vv, _mm512_maskz_loadu_ps(m[k], row + 16 * k), r[k]);
  }
  void add_to(float* dst) const {
    for (int k = 0; k < nz; ++k)
      _mm512_mask_storeu_ps(dst + 16 * k, m[k], _mm512_add_ps(_mm512_maskz_loadu_ps(m[k], dst + 16 * k), r[k]));
  }
};
#endif

// body(fma) with fma(v, row) adding v·row to `acc`: one loop per register count, so that the accumulators
// stay in registers.
template <typename A, typename Body>
inline void with_row_acc(RowAcc<A>& acc, const Body& body) {
  if constexpr (kAvx512Float<A>) {
    if (acc.nz == 4)
      body([&](A v, const A* row) { acc.template fma_n<4>(v, row); });
    else if (acc.nz == 8)
      body([&](A v, const A* row) { acc.template fma_n<8>(v, row); });
    else
      body([&](A v, const A* row) { acc.template fma_n<16>(v, row); });
  } else {
    body([&](A v, const A* row) { acc.fma(v, row); });
  }
}

// A task: image `img`, output rows [a0, a1), whose taps read input rows [r0, r1).
struct Band {
  int64_t img, a0, a1, r0, r1;
  Band(const Geometry& g, int64_t rows_per_task, int64_t t) {
    const int64_t bands = (g.ho + rows_per_task - 1) / rows_per_task;
    img = t / bands, a0 = (t % bands) * rows_per_task, a1 = std::min(g.ho, a0 + rows_per_task);
    r0 = std::max<int64_t>(0, a0 * g.stride - g.pad);
    r1 = std::min<int64_t>(g.h, (a1 - 1) * g.stride - g.pad + g.kh);
  }
};

// The taps of output pixel (a, b) that read a pixel inside the image, as (tap i·kw + j, p) with p the index of
// that input pixel in the band ((r − r0)·W + q).
struct Tap {
  int64_t tap, p;
};
inline void taps_of(const Geometry& g, const Band& bd, int64_t a, int64_t b, std::vector<Tap>& taps) {
  taps.clear();
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t r = a * g.stride + i - g.pad;
    if (r < bd.r0 || r >= bd.r1) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t q = b * g.stride + j - g.pad;
      if (q >= 0 && q < g.w) taps.push_back({i * g.kw + j, (r - bd.r0) * g.w + q});
    }
  }
}

int64_t rows_per_task(const Geometry& g, int64_t nthreads) {
  int64_t target = 4 * std::max<int64_t>(1, nthreads);  // a few tasks per thread, for balance
  int64_t rows = (g.n * g.ho + target - 1) / target;
  return std::clamp<int64_t>(rows, 1, g.ho);
}

template <typename E>
std::vector<typename E::Acc> widen(const typename E::In* k, size_t count) {
  std::vector<typename E::Acc> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = E::load(k[i]);
  return out;
}

// Shapes checked, and the kernel in the accumulation type (widened once from bfloat16), for both forwards.
template <ffi::DataType DX, ffi::DataType D>
ffi::Error forward_setup(const ffi::Buffer<DX>& x, const ffi::Buffer<D>& k, ffi::Span<const int64_t> yd,
                         int64_t stride, int64_t padding,
                         Geometry* g, std::vector<typename Elem<D>::Acc>* kwide,
                         const typename Elem<D>::Acc** kern) {
  using E = Elem<D>;
  if (auto err = make_geometry(x.dimensions(), k.dimensions(), stride, padding, g); err.failure()) return err;
  if (yd.size() != 4 || yd[0] != g->n || yd[1] != g->ho || yd[2] != g->wo || yd[3] != g->co)
    return ffi::Error::InvalidArgument("event_conv: output shape does not match the convolution");
  if constexpr (std::is_same_v<typename E::In, typename E::Acc>) {
    *kern = k.typed_data();
  } else {
    *kwide = widen<E>(k.typed_data(), k.element_count());
    *kern = kwide->data();
  }
  return ffi::Error::Success();
}

// y = conv(x, K): every output pixel sums its taps' events.  x is of type DX (D, or bytes), K of type D.
template <ffi::DataType DX, ffi::DataType D>
ffi::Error EventConvFwd(ffi::ThreadPool pool, ffi::Buffer<DX> x, ffi::Buffer<D> k,
                        ffi::ResultBuffer<Elem<D>::kAcc> y, int64_t stride, int64_t padding) {
  using X = Elem<DX>;
  using A = typename Elem<D>::Acc;
  Geometry g;
  std::vector<A> kwide;
  const A* kern;
  if (auto err = forward_setup<DX, D>(x, k, y->dimensions(), stride, padding, &g, &kwide, &kern); err.failure())
    return err;
  A* out = y->typed_data();
  const typename X::In* xin = x.typed_data();
  const int64_t rpt = rows_per_task(g, pool.num_threads());
  const int64_t ntasks = g.n * ((g.ho + rpt - 1) / rpt);
  const int64_t nw = workers(pool, ntasks);
  std::vector<Events<A>> ev(nw);
  const int64_t tap_stride = g.cg * g.co;
  // Per output pixel, group and tile of ≤ 64 output channels: the taps' events accumulated in registers.
  run_tasks(pool, ntasks, nw, [&](int64_t w, int64_t t) {
    Events<A>& e = ev[w];
    const Band bd(g, rpt, t);
    if (bd.r1 > bd.r0) e.template build<X>(xin, g, bd.img, bd.r0, bd.r1);
    std::vector<Tap> taps;
    for (int64_t a = bd.a0; a < bd.a1; ++a)
      for (int64_t b = 0; b < g.wo; ++b) {
        taps_of(g, bd, a, b, taps);
        A* y_pix = out + ((bd.img * g.ho + a) * g.wo + b) * g.co;
        for (int64_t grp = 0; grp < g.groups; ++grp)
          for (int64_t o0 = 0; o0 < g.cgo; o0 += 64) {
            Tile<A> acc(std::min<int64_t>(64, g.cgo - o0));
            for (const Tap& tp : taps) {
              const A* k_tap = kern + tp.tap * tap_stride + o0;
              const int64_t pg = tp.p * g.groups + grp;
              for (int32_t n = e.start[pg]; n < e.start[pg + 1]; ++n) acc.fma(e.val[n], k_tap + e.koff[n]);
            }
            acc.store(y_pix + grp * g.cgo + o0);
          }
      }
  });
  return ffi::Error::Success();
}

// The kernel gradient as sums of dy rows: dK[tap, c, o] = Σ_p x[s·p + tap − pad, c]·dy[p, o].  Per chunk of
// output pixels (their dy rows fit in L2) the events are listed per (tap, channel), one entry per output
// pixel that reads the event through that tap; each list sums its pixels' dy rows in registers (≤ 256
// outputs at a time) and adds them to its kernel row once.  Used for dense convolutions (the 1×1
// projections, DSSA's patch embedding, the downsampling 3×3), whose partial kernel (up to 384 × 1536, or
// 3×3 × 192 × 384) leaves L2 when every event updates a kernel row in memory as the per-pixel path below
// does; the group-wise 3×3 (64-wide kernel rows, short lists) stays on that path.
template <typename X, typename A>
void kernel_grad_lists(ffi::ThreadPool& pool, const typename X::In* xin, const A* dy, const Geometry& g,
                       A* out) {
  const int64_t pixels = g.n * g.ho * g.wo, taps = g.kh * g.kw, lists = taps * g.c;
  const int64_t row_bytes = g.co * static_cast<int64_t>(sizeof(A));
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 20) / row_bytes, 16, 1024);   // dy rows ≤ 1 MB
  const int64_t ntasks = (pixels + chunk - 1) / chunk;
  const int64_t nw = workers(pool, ntasks);
  struct Lists {
    std::vector<int32_t> start, next, pix;
    std::vector<A> val;
  };
  std::vector<Lists> per_worker(nw);
  const size_t ksize = static_cast<size_t>(taps * g.cg * g.co);
  sum_over_tasks(pool, ntasks, nw, ksize, out, [&](int64_t w, int64_t t, A* part) {
    Lists& L = per_worker[w];
    const int64_t p0 = t * chunk, p1 = std::min(pixels, p0 + chunk);
    // f(list, input row) for every tap of every output pixel of the chunk
    auto for_each_tap = [&](auto&& f) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t img = p / (g.ho * g.wo), a = p / g.wo % g.ho, b = p % g.wo;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t r = a * g.stride + i - g.pad;
          if (r < 0 || r >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t q = b * g.stride + j - g.pad;
            if (q >= 0 && q < g.w) f(p - p0, (i * g.kw + j) * g.c, xin + ((img * g.h + r) * g.w + q) * g.c);
          }
        }
      }
    };
    L.start.assign(lists + 1, 0);
    for_each_tap([&](int64_t, int64_t l0, const typename X::In* px) {
      for_each_nonzero<X>(px, g.c, [&](int64_t c) { ++L.start[l0 + c + 1]; });
    });
    for (int64_t l = 0; l < lists; ++l) L.start[l + 1] += L.start[l];
    L.pix.resize(L.start[lists]), L.val.resize(L.start[lists]);
    L.next.assign(L.start.begin(), L.start.end() - 1);
    for_each_tap([&](int64_t q, int64_t l0, const typename X::In* px) {
      for_each_nonzero<X>(px, g.c, [&](int64_t c) {
        const int32_t n = L.next[l0 + c]++;
        L.pix[n] = static_cast<int32_t>(q), L.val[n] = static_cast<A>(X::load(px[c]));
      });
    });
    const A* dy0 = dy + p0 * g.co;
    for (int64_t l = 0; l < lists; ++l) {
      const int32_t n0 = L.start[l], n1 = L.start[l + 1];
      if (n0 == n1) continue;
      const int64_t tap = l / g.c, c = l % g.c, grp = c / g.cg;
      A* krow = part + (tap * g.cg + c % g.cg) * g.co + grp * g.cgo;
      for (int64_t o0 = 0; o0 < g.cgo; o0 += RowAcc<A>::kMax) {
        RowAcc<A> acc(std::min<int64_t>(RowAcc<A>::kMax, g.cgo - o0));
        const A* col = dy0 + grp * g.cgo + o0;
        with_row_acc(acc, [&](auto fma) {
          for (int32_t n = n0; n < n1; ++n) fma(L.val[n], col + L.pix[n] * g.co);
        });
        acc.add_to(krow + o0);
      }
    }
  });
}

// dK = Σ_events x · dy.  x is of type DX; dy and dK of the accumulation type ACC (float32 or float64).
template <ffi::DataType DX, ffi::DataType ACC>
ffi::Error EventConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<DX> x, ffi::Buffer<ACC> dy,
                               ffi::ResultBuffer<ACC> dk, int64_t stride, int64_t padding) {
  using E = Elem<DX>;
  using A = typename Elem<ACC>::Acc;
  Geometry g;
  if (auto err = make_geometry(x.dimensions(), dk->dimensions(), stride, padding, &g); err.failure()) return err;
  auto dd = dy.dimensions();
  if (dd.size() != 4 || dd[0] != g.n || dd[1] != g.ho || dd[2] != g.wo || dd[3] != g.co)
    return ffi::Error::InvalidArgument("event_conv: dy shape does not match the convolution");
  const typename E::In* xin = x.typed_data();
  const A* dyp = dy.typed_data();
  if (g.groups == 1 || (g.kh == g.stride && g.kw == g.stride && g.pad == 0)) {
    kernel_grad_lists<E, A>(pool, xin, dyp, g, dk->typed_data());
    return ffi::Error::Success();
  }
  const int64_t rpt = rows_per_task(g, pool.num_threads());
  const int64_t ntasks = g.n * ((g.ho + rpt - 1) / rpt);
  const int64_t nw = workers(pool, ntasks);
  std::vector<Events<A>> ev(nw);
  std::vector<std::vector<Tap>> taps_of_worker(nw);
  const int64_t tap_stride = g.cg * g.co;
  sum_over_tasks(pool, ntasks, nw, dk->element_count(), dk->typed_data(), [&](int64_t w, int64_t t, A* acc) {
    Events<A>& e = ev[w];
    std::vector<Tap>& taps = taps_of_worker[w];
    const Band bd(g, rpt, t);
    if (bd.r1 > bd.r0) e.template build<E>(xin, g, bd.img, bd.r0, bd.r1);
    for (int64_t a = bd.a0; a < bd.a1; ++a)
      for (int64_t b = 0; b < g.wo; ++b) {
        taps_of(g, bd, a, b, taps);
        const A* dy_pix = dyp + ((bd.img * g.ho + a) * g.wo + b) * g.co;
        for (const Tap& tp : taps)
          for (int64_t grp = 0; grp < g.groups; ++grp)
            for (int32_t n = e.start[tp.p * g.groups + grp]; n < e.start[tp.p * g.groups + grp + 1]; ++n)
              axpy(acc + tp.tap * tap_stride + e.koff[n], dy_pix + grp * g.cgo, e.val[n], g.cgo);
      }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------
// Dense direct convolution (no events): the input gradient dx = conv(dy, K̃) of a stride-1 convolution,
// whose dy has no zeros to skip.  A task is one group of a band of output rows of one image, so the
// group's kernel (kh·kw·C/g·64 values per 64-channel tile, 147 KB for a 3×3 of 64 channels) stays in L2
// while the band's pixels stream past it.  Six output pixels share every kernel row loaded (24 accumulator
// registers per 64-channel tile); each input value is read once per tap, with no shifted copies.
constexpr int kPix = 6;

template <typename A>
struct PixBlock {
  Tile<A> t[kPix];
  explicit PixBlock(int64_t w) : t{Tile<A>(w), Tile<A>(w), Tile<A>(w), Tile<A>(w), Tile<A>(w), Tile<A>(w)} {}
};

#if defined(__AVX512F__)
// The float32 block with its 24 accumulators as local variables (held in registers across the taps).
// xp[tap · kPix + p]: the input row (this group's channels) of pixel p at that tap; live[tap]: whether any
// of the block's pixels reads inside the image at that tap.
template <typename E>
void dense_block_f32(const Geometry& g, const typename E::In* const* xp, const char* live, const float* k_tile,
                     int64_t width, float* const dst[kPix], int64_t np) {
  __mmask16 m[4];
  tile_masks(width, m);
  BLOCK_ZERO
  const int64_t taps = g.kh * g.kw, tap_stride = g.cg * g.co;
  for (int64_t tap = 0; tap < taps; ++tap) {
    if (!live[tap]) continue;                          // every pixel of the block reads padding here
    const typename E::In* const* x = xp + tap * kPix;
    const float* kt = k_tile + tap * tap_stride;
    for (int64_t c = 0; c < g.cg; ++c, kt += g.co) {
      const __m512 k0 = _mm512_maskz_loadu_ps(m[0], kt), k1 = _mm512_maskz_loadu_ps(m[1], kt + 16),
                   k2 = _mm512_maskz_loadu_ps(m[2], kt + 32), k3 = _mm512_maskz_loadu_ps(m[3], kt + 48);
#define X_AT(p) E::load(x[p][c])
      BLOCK_FMA(X_AT)
#undef X_AT
    }
  }
#define STORE4(p)                                                                                    \
  if (p < np) {                                                                                      \
    _mm512_mask_storeu_ps(dst[p], m[0], r##p##0), _mm512_mask_storeu_ps(dst[p] + 16, m[1], r##p##1); \
    _mm512_mask_storeu_ps(dst[p] + 32, m[2], r##p##2), _mm512_mask_storeu_ps(dst[p] + 48, m[3], r##p##3); \
  }
  STORE4(0) STORE4(1) STORE4(2) STORE4(3) STORE4(4) STORE4(5)
#undef STORE4
}
#endif

#if defined(__AVX512F__)
// Winograd F(2×2, 3×3) for the dense 3×3 convolution of 64-channel groups (stride 1, padding 1, even output
// size: the input gradient of the group-wise GWFFN conv), float32.  Each 2×2 output tile is
//
//     Y = Aᵀ [ Σ_c (G K_c,o Gᵀ) ⊙ (Bᵀ d_c B) ] A        (d_c: the tile's 4×4 input patch of channel c)
//
// so the 9 taps' 9·64·64 multiplies per output pixel become 16·64·64 per four pixels (2.25× fewer).  The 16
// positions ξ of the transformed tiles are 16 independent (tiles × 64) · (64 × 64) products, done six tiles
// at a time in 24 accumulator registers as in dense_block_f32.
//   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],  Aᵀ = [1 1 1 0; 0 1 −1 −1]
constexpr int kWinoTiles = 6;

bool winograd_applies(const Geometry& g) {
  return g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.cg == 64 && g.cgo == 64 && g.ho % 2 == 0 &&
         g.wo % 2 == 0 && g.ho == g.h && g.wo == g.w;
}

// U[group][ξ][c][o] = (G K[:, :, c, o] Gᵀ)[ξ] for every group's 64 × 64 block of K [3, 3, 64, O].
std::vector<float> winograd_kernel(const float* k, const Geometry& g) {
  std::vector<float> u(static_cast<size_t>(g.groups) * 16 * 64 * 64);
  const float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t c = 0; c < 64; ++c)
      for (int64_t o = 0; o < 64; ++o) {
        float kk[3][3], t[4][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) kk[i][j] = k[((i * 3 + j) * 64 + c) * g.co + grp * 64 + o];
        for (int a = 0; a < 4; ++a)
          for (int j = 0; j < 3; ++j) t[a][j] = G[a][0] * kk[0][j] + G[a][1] * kk[1][j] + G[a][2] * kk[2][j];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b)
            u[((grp * 16 + a * 4 + b) * 64 + c) * 64 + o] = t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2];
      }
  return u;
}

// Bᵀ z B over 16 lanes of channels: z[4][4] in, z[4][4] out (in place).
inline void winograd_input_tile(__m512 z[4][4]) {
  for (int c = 0; c < 4; ++c) {                                       // rows: Bᵀ z
    const __m512 d0 = z[0][c], d1 = z[1][c], d2 = z[2][c], d3 = z[3][c];
    z[0][c] = _mm512_sub_ps(d0, d2), z[1][c] = _mm512_add_ps(d1, d2);
    z[2][c] = _mm512_sub_ps(d2, d1), z[3][c] = _mm512_sub_ps(d1, d3);
  }
  for (int r = 0; r < 4; ++r) {                                       // columns: (Bᵀ z) B
    const __m512 d0 = z[r][0], d1 = z[r][1], d2 = z[r][2], d3 = z[r][3];
    z[r][0] = _mm512_sub_ps(d0, d2), z[r][1] = _mm512_add_ps(d1, d2);
    z[r][2] = _mm512_sub_ps(d2, d1), z[r][3] = _mm512_sub_ps(d1, d3);
  }
}

// M[ξ][p][0:64] = Σ_c V[ξ][p][c] · U[ξ][c][0:64] for the block's kWinoTiles tiles p, one ξ.
static_assert(kWinoTiles == kPix, "the Winograd products use the six-row register block");
inline void winograd_gemm(const float* v, const float* u, float* m) {
  BLOCK_ZERO
  for (int64_t c = 0; c < 64; ++c, u += 64) {
    const __m512 k0 = _mm512_loadu_ps(u), k1 = _mm512_loadu_ps(u + 16), k2 = _mm512_loadu_ps(u + 32),
                 k3 = _mm512_loadu_ps(u + 48);
#define V_AT(p) v[p * 64 + c]
    BLOCK_FMA(V_AT)
#undef V_AT
  }
#define STORE4(p)                                                                          \
  _mm512_storeu_ps(m + p * 64, r##p##0), _mm512_storeu_ps(m + p * 64 + 16, r##p##1);       \
  _mm512_storeu_ps(m + p * 64 + 32, r##p##2), _mm512_storeu_ps(m + p * 64 + 48, r##p##3);
  STORE4(0) STORE4(1) STORE4(2) STORE4(3) STORE4(4) STORE4(5)
#undef STORE4
}

void winograd_conv(ffi::ThreadPool& pool, const float* x, const float* k, const Geometry& g, float* y) {
  const std::vector<float> u = winograd_kernel(k, g);
  const int64_t tw = g.wo / 2, tiles = (g.ho / 2) * tw;                // tiles per image, row-major
  // Tasks (image, band of ≈ 64 tiles, group): a group's U (16·64·64 floats, 256 KB) stays in L2.
  const int64_t band = std::min<int64_t>(tiles, 64), bands = (tiles + band - 1) / band;
  const int64_t ntasks = g.n * bands * g.groups;
  run_tasks(pool, ntasks, workers(pool, ntasks), [&](int64_t, int64_t t) {
    const int64_t grp = t % g.groups, img = t / g.groups / bands, b0 = t / g.groups % bands * band;
    const float* ug = u.data() + grp * 16 * 64 * 64;
    alignas(64) float v[16][kWinoTiles * 64], m[16][kWinoTiles * 64];
    for (int64_t q0 = b0; q0 < std::min(tiles, b0 + band); q0 += kWinoTiles) {
      const int64_t np = std::min<int64_t>(kWinoTiles, std::min(tiles, b0 + band) - q0);
      for (int64_t p = 0; p < kWinoTiles; ++p) {                      // input transforms (zeros past np)
        const int64_t tr = (q0 + p) / tw, tc = (q0 + p) % tw;
        for (int64_t c0 = 0; c0 < 64; c0 += 16) {
          __m512 z[4][4];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              const int64_t r = 2 * tr + i - 1, q = 2 * tc + j - 1;
              const bool inside = p < np && r >= 0 && r < g.h && q >= 0 && q < g.w;
              z[i][j] = inside ? _mm512_loadu_ps(x + ((img * g.h + r) * g.w + q) * g.c + grp * 64 + c0)
                               : _mm512_setzero_ps();
            }
          winograd_input_tile(z);
          for (int xi = 0; xi < 16; ++xi) _mm512_storeu_ps(&v[xi][p * 64 + c0], z[xi / 4][xi % 4]);
        }
      }
      for (int xi = 0; xi < 16; ++xi) winograd_gemm(v[xi], ug + xi * 64 * 64, m[xi]);
      for (int64_t p = 0; p < np; ++p) {                              // output transforms Aᵀ M A
        const int64_t tr = (q0 + p) / tw, tc = (q0 + p) % tw;
        for (int64_t o0 = 0; o0 < 64; o0 += 16) {
          __m512 s[2][4];
          for (int j = 0; j < 4; ++j) {
            const __m512 m0 = _mm512_loadu_ps(&m[j][p * 64 + o0]), m1 = _mm512_loadu_ps(&m[4 + j][p * 64 + o0]),
                         m2 = _mm512_loadu_ps(&m[8 + j][p * 64 + o0]), m3 = _mm512_loadu_ps(&m[12 + j][p * 64 + o0]);
            s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
          }
          for (int i = 0; i < 2; ++i) {
            float* row = y + ((img * g.ho + 2 * tr + i) * g.wo + 2 * tc) * g.co + grp * 64 + o0;
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]));
            _mm512_storeu_ps(row + g.co, _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]));
          }
        }
      }
    }
  });
}
#endif

template <ffi::DataType D>
ffi::Error DenseConvFwd(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> k,
                        ffi::ResultBuffer<Elem<D>::kAcc> y, int64_t stride, int64_t padding) {
  using E = Elem<D>;
  using A = typename E::Acc;
  using In = typename E::In;
  Geometry g;
  std::vector<A> kwide;
  const A* kern;
  if (auto err = forward_setup<D, D>(x, k, y->dimensions(), stride, padding, &g, &kwide, &kern); err.failure())
    return err;
  A* out = y->typed_data();
  const In* xin = x.typed_data();
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<In, float>) {
    if (winograd_applies(g)) {
      winograd_conv(pool, xin, kern, g, out);
      return ffi::Error::Success();
    }
  }
#endif
  const std::vector<In> zeros(g.c, In(0));          // the input row of a pixel outside the image
  // Bands of about 256 output pixels; tasks ordered (image, band, group).
  const int64_t band_rows = std::clamp<int64_t>((256 + g.wo - 1) / g.wo, 1, g.ho);
  const int64_t bands = (g.ho + band_rows - 1) / band_rows, ntasks = g.n * bands * g.groups;
  const int64_t taps = g.kh * g.kw, tap_stride = g.cg * g.co;
  run_tasks(pool, ntasks, workers(pool, ntasks), [&](int64_t, int64_t t) {
    const int64_t grp = t % g.groups, img = t / g.groups / bands, band = t / g.groups % bands;
    const int64_t p0 = band * band_rows * g.wo, p1 = std::min(g.ho, (band + 1) * band_rows) * g.wo;
    std::vector<const In*> xp(taps * kPix);
    std::vector<char> live(taps);
    for (int64_t o0 = 0; o0 < g.cgo; o0 += 64) {
      const int64_t width = std::min<int64_t>(64, g.cgo - o0);
      const A* k_tile = kern + grp * g.cgo + o0;
      for (int64_t q0 = p0; q0 < p1; q0 += kPix) {        // kPix consecutive output pixels (row-major)
        const int64_t np = std::min<int64_t>(kPix, p1 - q0);
        std::fill(live.begin(), live.end(), 0);
        A* dst[kPix];
        for (int64_t p = 0; p < kPix; ++p) {
          const int64_t q = q0 + std::min<int64_t>(p, np - 1), a = q / g.wo, b = q % g.wo;
          dst[p] = out + ((img * g.ho + a) * g.wo + b) * g.co + grp * g.cgo + o0;
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t r = a * g.stride + i - g.pad, c = b * g.stride + j - g.pad, tap = i * g.kw + j;
              const bool inside = p < np && r >= 0 && r < g.h && c >= 0 && c < g.w;
              xp[tap * kPix + p] = inside ? xin + ((img * g.h + r) * g.w + c) * g.c + grp * g.cg : zeros.data();
              live[tap] |= inside;
            }
        }
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<A, float>) {
          dense_block_f32<E>(g, xp.data(), live.data(), k_tile, width, dst, np);
          continue;
        }
#endif
        PixBlock<A> acc(width);
        for (int64_t tap = 0; tap < taps; ++tap) {
          if (!live[tap]) continue;
          for (int64_t c = 0; c < g.cg; ++c) {
            const A* krow = k_tile + tap * tap_stride + c * g.co;
            for (int64_t p = 0; p < kPix; ++p) acc.t[p].fma(E::load(xp[tap * kPix + p][c]), krow);
          }
        }
        for (int64_t p = 0; p < np; ++p) acc.t[p].store(dst[p]);
      }
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------
// Batched matrix product with a binary left operand (the deploy form's DSSA products, where the queries or the
// attention map are spikes):  y[n, p, o] = Σ over the events c of s[n, p, ·] of s[n, p, c] · K[n, c, o].
// s [N, P, C] bytes, K [N, C, O] and y [N, P, O] float32 or float64. Tasks: one image n and a block of rows p;
// a row's events are listed once, then summed into ≤ 64-wide register tiles of its output row.
template <ffi::DataType D>
ffi::Error EventMatmulFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> s, ffi::Buffer<D> k,
                          ffi::ResultBuffer<D> y) {
  using A = typename Elem<D>::Acc;
  const auto sd = s.dimensions(), kd = k.dimensions();
  if (sd.size() != 3 || kd.size() != 3 || sd[0] != kd[0] || sd[2] != kd[1])
    return ffi::Error::InvalidArgument("event_matmul: s must be [N, P, C] and K [N, C, O]");
  const int64_t n_img = sd[0], rows = sd[1], c_in = sd[2], c_out = kd[2];
  constexpr int64_t kRows = 32;
  const int64_t blocks = (rows + kRows - 1) / kRows, ntasks = n_img * blocks;
  const int64_t nw = workers(pool, ntasks);
  std::vector<std::vector<int32_t>> events(nw, std::vector<int32_t>(static_cast<size_t>(c_in)));
  const uint8_t* sin = s.typed_data();
  const A* kin = k.typed_data();
  A* out = y->typed_data();
  run_tasks(pool, ntasks, nw, [&](int64_t w, int64_t t) {
    const int64_t img = t / blocks, p0 = (t % blocks) * kRows, p1 = std::min(rows, p0 + kRows);
    const A* kimg = kin + img * c_in * c_out;
    int32_t* ev = events[w].data();
    for (int64_t p = p0; p < p1; ++p) {
      const uint8_t* sp = sin + (img * rows + p) * c_in;
      int32_t count = 0;
      for_each_nonzero<Elem<ffi::U8>>(sp, c_in, [&](int64_t c) { ev[count++] = static_cast<int32_t>(c); });
      A* yp = out + (img * rows + p) * c_out;
      for (int64_t o0 = 0; o0 < c_out; o0 += 64) {
        Tile<A> acc(std::min<int64_t>(64, c_out - o0));
        for (int32_t e = 0; e < count; ++e) acc.fma(static_cast<A>(sp[ev[e]]), kimg + ev[e] * c_out + o0);
        acc.store(yp + o0);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// Handlers, named by the input type (F32, F64, BF16) or, for byte spikes x, U8 and the type of the second
// operand (the kernel K for the forward, dy for the kernel gradient).  Results are in the accumulation type
// ACC (float32; float64 for float64).  The dense forward takes float inputs only.
#define HANDLER(NAME, IMPL, X, ARG2, ACC)                 \
  SRESFORMER_HANDLER(NAME, IMPL,                          \
                     ffi::Ffi::Bind()                     \
                         .Ctx<ffi::ThreadPool>()          \
                         .Arg<ffi::Buffer<X>>()           \
                         .Arg<ffi::Buffer<ARG2>>()        \
                         .Ret<ffi::Buffer<ACC>>()         \
                         .Attr<int64_t>("stride")         \
                         .Attr<int64_t>("padding"));
// (function pointers first: a template-id's comma would split the macro's arguments)
#define FORWARD(SUFFIX, X, D, ACC)                                         \
  namespace {                                                              \
  constexpr auto EventConvFwd_##SUFFIX = &EventConvFwd<X, D>;              \
  }                                                                        \
  HANDLER(EventConvFwd##SUFFIX, EventConvFwd_##SUFFIX, X, D, ACC)
#define KERNEL_GRAD(SUFFIX, X, ACC)                                        \
  namespace {                                                              \
  constexpr auto EventConvKernelGrad_##SUFFIX = &EventConvKernelGrad<X, ACC>; \
  }                                                                        \
  HANDLER(EventConvKernelGrad##SUFFIX, EventConvKernelGrad_##SUFFIX, X, ACC, ACC)

FORWARD(F32, ffi::F32, ffi::F32, ffi::F32)
FORWARD(F64, ffi::F64, ffi::F64, ffi::F64)
FORWARD(BF16, ffi::BF16, ffi::BF16, ffi::F32)
FORWARD(U8F32, ffi::U8, ffi::F32, ffi::F32)
FORWARD(U8F64, ffi::U8, ffi::F64, ffi::F64)
FORWARD(U8BF16, ffi::U8, ffi::BF16, ffi::F32)
KERNEL_GRAD(F32, ffi::F32, ffi::F32)
KERNEL_GRAD(F64, ffi::F64, ffi::F64)
KERNEL_GRAD(BF16, ffi::BF16, ffi::F32)
KERNEL_GRAD(U8F32, ffi::U8, ffi::F32)
KERNEL_GRAD(U8F64, ffi::U8, ffi::F64)
HANDLER(DenseConvFwdF32, DenseConvFwd<ffi::F32>, ffi::F32, ffi::F32, ffi::F32)
HANDLER(DenseConvFwdF64, DenseConvFwd<ffi::F64>, ffi::F64, ffi::F64, ffi::F64)
HANDLER(DenseConvFwdBF16, DenseConvFwd<ffi::BF16>, ffi::BF16, ffi::BF16, ffi::F32)
#define MATMUL_HANDLER(SUFFIX, D)                                              \
  SRESFORMER_HANDLER(EventMatmulFwd##SUFFIX, EventMatmulFwd<D>,                \
                     ffi::Ffi::Bind()                                          \
                         .Ctx<ffi::ThreadPool>()                               \
                         .Arg<ffi::Buffer<ffi::U8>>()                          \
                         .Arg<ffi::Buffer<D>>()                                \
                         .Ret<ffi::Buffer<D>>())
MATMUL_HANDLER(F32, ffi::F32);
MATMUL_HANDLER(F64, ffi::F64);

// The handler list (registry.h), for ops/kernels.py.
extern "C" int64_t sresformer_num_targets() { return static_cast<int64_t>(sresformer::targets().size()); }
extern "C" const char* sresformer_target_name(int64_t i) { return sresformer::targets()[i].name; }
extern "C" void* sresformer_target_handler(int64_t i) {
  return reinterpret_cast<void*>(sresformer::targets()[i].handler);
}
