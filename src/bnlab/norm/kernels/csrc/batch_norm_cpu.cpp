// bnlab's fast CPU BatchNorm: fused kernels for float32 and float64, registered as PyTorch
// operators (torch.ops.bnlab.*, see "operators" below) in a Python extension module. The math
// is the one in bnlab/norm/reference.py's docstring; this file only makes it fast.
// bnlab/norm/kernels/ builds it, verifies and loads it, and registers the operators' fake
// implementations; bnlab/norm/backends.py decides when it is used.
//
// Two memory layouts cover every dense input:
//   planes  (N, C, S) contiguous, S = prod(spatial) > 1: channel c owns N planes of S values.
//   rows    (R, C) with C innermost: 2-D (N, C) inputs and channels_last / channels_last_3d,
//           R = N * prod(spatial).
//           Rows are walked k at a time as "wide rows" of k * C values, so that small or odd
//           C still fill whole SIMD registers (C = 16: 128 values, C = 84: 336).
// Statistics: each plane, or each block of 32 wide rows, gets an exact two-pass mean and sum
// of squared deviations while it sits in L1 (planes in double; row blocks in the input's type,
// per column, at full SIMD width); blocks are merged in double with Chan et al.'s pairwise
// formula. So x is read from memory once, and the variance is never formed as
// E[x^2] - E[x]^2. Row blocks are summed as x - K, K the channel's first value, so that sums in
// the input's type see values of the order of std: a block mean of x itself is off by about
// eps |mean|, which biases the block's m2 by the square of that (relative error 2e-2 in float32
// at |mean|/std = 1e6).
// Work is split into a fixed number of chunks, each with its own accumulator, merged in chunk
// order: results do not depend on thread scheduling.
// Passes over memory: in the planes layout (with at least two channels a thread) one parallel
// loop over channels reduces a channel and then writes its output (forward: statistics, then
// y; backward: gradient sums, then dx), so the channel's N * S values are re-read from cache:
// training reads x and writes y, then reads x and dy and writes dx, each once from memory (the
// floor: 5 passes) where a channel fits in L2. The rows layout needs every row's statistics
// before any output, and reads x (and dy) twice: 7 passes.

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kGrain = 32768;       // elements below which one thread does everything
// Rows layout: rows reduced in the input's type (full SIMD width) before a merge into double
// accumulators; the statistics' merge costs more, so it runs on longer blocks.
constexpr int64_t kSubRows = 8;
constexpr int64_t kStatRows = 32;

struct Layout {
  bool rows;        // true: (R, C) channels innermost; false: (N, C, S) planes
  int64_t n, c, s;  // batch, channels, spatial size (rows layout: R = n * s)
  // Rows layout: k consecutive rows are walked as one "wide row" of w = k * C values (column
  // j holds channel j % C), so that short rows (small or odd C) still fill SIMD registers.
  int64_t k = 1, w = 0;
};

// k for the wide rows: w = k * C a multiple of 16 (a float AVX-512 register) and at least 128
// values where that keeps w <= 512; else just long enough. C >= 128 keeps plain rows.
int64_t rows_per_wide_row(int64_t C) {
  if (C >= 128) return 1;
  int64_t k = 16 / std::gcd<int64_t>(C, 16);
  while (k * C < 128) k *= 2;
  if (k * C > 512)
    for (k = 1; k * C < 128;) k *= 2;
  return k;
}

Layout layout_of(const at::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t s = n * c == 0 ? 0 : x.numel() / (n * c);
  bool rows = s == 1;
  if (!x.is_contiguous()) {
    rows = (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
           (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
    TORCH_CHECK(rows, "bnlab fast batch_norm: input must be contiguous or channels_last");
  }
  if (!rows) return {false, n, c, s};
  const int64_t k = rows_per_wide_row(c);
  return {true, n, c, s, k, k * c};
}

// Rows layout: the number of whole wide rows; the R % k rows after them form the "tail".
inline int64_t wide_rows(const Layout& L) { return L.n * L.s / L.k; }
inline int64_t tail_rows(const Layout& L) { return L.n * L.s % L.k; }

// A tensor laid out exactly like x (same strides), holding t's values.
at::Tensor like(const at::Tensor& t, const at::Tensor& x) {
  if (t.strides() == x.strides()) return t;
  return at::empty_like(x).copy_(t);
}

// Running (count, mean, m2) merged with a block's (nb, mean_b, m2_b): Chan et al.,
//   delta = mean_b - mean,  mean += delta nb / total,  m2 += m2_b + delta^2 count nb / total.
// An inf in the data makes a mean inf, and the delta form then gives inf - inf = NaN where the
// sum of the values gives inf; so a non-finite delta merges the means as the weighted sum
// (count mean + nb mean_b) / total instead: inf, or NaN for +inf with -inf, as torch's are. (m2
// is NaN either way: the block that holds the inf has x - mean = inf - inf.)
// f = count / total, f_b = nb / total.
inline double merged_mean(double mean, double mean_b, double f, double f_b) {
  const double delta = mean_b - mean;
  return std::isfinite(delta) ? mean + delta * f_b : mean * f + mean_b * f_b;
}

// Chan's between-block term delta^2 * n_a n_b / n, which is 0 when one side is empty: said
// explicitly, because delta^2 may overflow (|x| ~ 1e200 in double) and inf * 0 is NaN.
inline double between(double delta, double f_m2) {
  return f_m2 == 0 ? 0.0 : delta * delta * f_m2;
}

inline void merge(double& count, double& mean, double& m2, double nb, double mean_b,
                  double m2_b) {
  const double total = count + nb;
  const double delta = mean_b - mean;
  mean = merged_mean(mean, mean_b, count / total, nb / total);
  m2 += m2_b + between(delta, count * nb / total);
  count = total;
}

// The per-channel (center, scale, shift) of y = (x - center) * scale + shift. Where the scale
// invstd * weight is 0 or not finite (a float32 variance beyond FLT_MAX makes invstd 0; eps = 0
// with a zero variance makes it inf), (x - mean) * scale differs from ATen's x * alpha + beta,
// beta = bias - mean * alpha: x - mean can overflow (x = -3e38) and 0 * inf is NaN where ATen
// gives bias. There the channel uses ATen's form: center 0, shift bias - mean * scale.
template <typename T>
inline void torch_affine(T mean, T scale, T bias, T* center, T* shift) {
  const bool degenerate = scale == T(0) || !std::isfinite(scale);
  *center = degenerate ? T(0) : mean;
  *shift = degenerate ? bias - mean * scale : bias;
}

// ATen's CPU kernels sum the squared deviations of float32 inputs in float32: past FLT_MAX the
// variance is inf (invstd 0, the running variance inf). The kernels sum in double, so they say
// the same where their sum exceeds FLT_MAX.
template <typename T>
inline double as_aten_m2(double m2) {
  if constexpr (std::is_same_v<T, float>)
    return m2 > static_cast<double>(std::numeric_limits<float>::max())
               ? std::numeric_limits<double>::infinity() : m2;
  return m2;
}

// ---- activation: the logistic sigmoid, vectorizable ----------------------------------------
// float: exp from Cody-Waite range reduction and a degree-6 polynomial (about 1 ulp), written
// with plain arithmetic so `omp simd` loops vectorize it; double: the C library's exp.
// Above ln(FLT_MAX) = 88.72 it overflows to inf as std::exp does (the scale 2^n is applied as
// 2^(n-1) * 2, so n = 128 is representable), so that sigmoid(-inf) and sigmoid(-89) are exactly
// 0 as torch.sigmoid's; a cap at 88 gave 1 / (1 + e^88) = 6e-39.
inline float exp_float(float x) {
  x = std::min(std::max(x, -87.0f), 89.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 126) << 23;  // 2^(n-1), n in [-125, 128]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale * 2.0f;
}
inline float sigmoid(float z) { return 1.0f / (1.0f + exp_float(-z)); }
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

enum Act : int64_t { kIdentity = 0, kSigmoid = 1, kRelu = 2 };

int64_t chunks_for(int64_t units, int64_t elems_per_unit) {
  const int64_t work = units * elems_per_unit;
  if (work < kGrain) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(units, at::get_num_threads()));
}

// Two zeroed rows of w values, this thread's own (reused across blocks): a row-block
// reduction's accumulators in T.
template <typename T>
std::pair<T*, T*> zeroed_rows(int64_t w) {
  thread_local std::vector<T> a, b;
  a.assign(w, T(0));
  b.assign(w, T(0));
  return {a.data(), b.data()};
}

// The rows layout's reductions: the whole wide rows split into `chunks` fixed ranges (so
// results do not depend on scheduling), each walked in blocks of at most `rows` wide rows:
// block(chunk, b0, b1). The tail rows are left to the caller.
template <typename F>
void for_row_blocks(const Layout& L, int64_t chunks, int64_t rows, const F& block) {
  const int64_t R = wide_rows(L);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = R * k / chunks, r1 = R * (k + 1) / chunks;
      for (int64_t b0 = r0; b0 < r1; b0 += rows) block(k, b0, std::min(r1, b0 + rows));
    }
  });
}

// Rows layout: a block of rows is reduced kCols columns at a time, each column's accumulator
// kept in a register (kCols floats: 4 AVX-512 registers) while the block's rows stream past;
// accumulators for a whole wide row (up to 512 values) would be loaded and stored again for
// every row. Each column is still summed over the rows in order, so the sums are the same.
constexpr int64_t kCols = 64;

// Columns [j0, j0 + n) of rows [b0, b1): bm = mean of x - K, bq = sum (x - K - bm)^2, in T.
// N: n as a compile-time constant (the full blocks), or 0 for the last, shorter block.
template <int64_t N, typename T>
inline void block_stats(const T* x, int64_t W, int64_t b0, int64_t b1, int64_t j0, int64_t n,
                        const T* K, T* bm, T* bq) {
  const int64_t cols = N > 0 ? N : n;
  T s[kCols] = {}, q[kCols] = {};
  const T nb = static_cast<T>(b1 - b0);
  for (int64_t r = b0; r < b1; ++r) {
    const T* p = x + r * W + j0;
#pragma omp simd
    for (int64_t u = 0; u < cols; ++u) s[u] += p[u] - K[j0 + u];
  }
#pragma omp simd
  for (int64_t u = 0; u < cols; ++u) s[u] /= nb;
  for (int64_t r = b0; r < b1; ++r) {
    const T* p = x + r * W + j0;
#pragma omp simd
    for (int64_t u = 0; u < cols; ++u) {
      const T d = (p[u] - K[j0 + u]) - s[u];
      q[u] += d * d;
    }
  }
  for (int64_t u = 0; u < cols; ++u) {
    bm[j0 + u] = s[u];
    bq[j0 + u] = q[u];
  }
}

// Columns [j0, j0 + n) of rows [b0, b1): fa = sum dz, fb = sum dz * (x - mean), in T.
template <int64_t N, typename T>
inline void block_grad_sums(const T* dz, const T* x, int64_t W, int64_t b0, int64_t b1,
                            int64_t j0, int64_t n, const T* mean, T* fa, T* fb) {
  const int64_t cols = N > 0 ? N : n;
  T a[kCols] = {}, b[kCols] = {};
  for (int64_t r = b0; r < b1; ++r) {
    const T* g = dz + r * W + j0;
    const T* p = x + r * W + j0;
#pragma omp simd
    for (int64_t u = 0; u < cols; ++u) {
      a[u] += g[u];
      b[u] += g[u] * (p[u] - mean[j0 + u]);
    }
  }
  for (int64_t u = 0; u < cols; ++u) {
    fa[j0 + u] = a[u];
    fb[j0 + u] = b[u];
  }
}

// f.template operator()<N>(j0, n) over the column blocks of a wide row of W values.
template <typename F>
inline void for_column_blocks(int64_t W, const F& f) {
  int64_t j0 = 0;
  for (; j0 + kCols <= W; j0 += kCols) f.template operator()<kCols>(j0, kCols);
  if (j0 < W) f.template operator()<0>(j0, W - j0);
}

// ---- statistics: per-channel mean and m2 = sum (x - mean)^2 ------------------------------

// Planes layout: a channel's planes lie C * S values apart, so each is a new stream that the
// hardware prefetcher meets cold; while one plane is reduced the next is requested.
template <typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(b + i);
}

// Planes layout: sums over a plane in double, in kAcc independent partial sums (4 AVX-512
// registers) added up at the end. With one accumulator each addition waits on the previous
// one, and the reduction runs at the adder's latency, about half the memory's speed here.
constexpr int64_t kAcc = 32;

// sum f(j) for j < n, f(j) a double.
template <typename F>
inline double plane_sum(int64_t n, const F& f) {
  double acc[kAcc] = {};
  int64_t j = 0;
  for (; j + kAcc <= n; j += kAcc)
#pragma omp simd
    for (int64_t u = 0; u < kAcc; ++u) acc[u] += f(j + u);
  double s = 0;
  for (; j < n; ++j) s += f(j);
  for (int64_t u = 0; u < kAcc; ++u) s += acc[u];
  return s;
}

// Planes layout: channel c's N planes; its statistics are computed where the channel's
// output is (see forward_train), so that its values are re-read from cache.
template <typename T>
void plane_stats(const T* x, const Layout& L, int64_t c, double* mean, double* m2) {
  double count = 0, mu = 0, acc = 0;
  for (int64_t n = 0; n < L.n; ++n) {
    const T* p = x + (n * L.c + c) * L.s;
    if (n + 1 < L.n) prefetch(p + L.c * L.s, L.s);
    const double pm = plane_sum(L.s, [p](int64_t i) { return static_cast<double>(p[i]); }) / L.s;
    const double sq = plane_sum(L.s, [p, pm](int64_t i) {
      const double d = p[i] - pm;
      return d * d;
    });
    merge(count, mu, acc, static_cast<double>(L.s), pm, sq);
  }
  *mean = mu;
  *m2 = acc;
}

// Planes layout: per_channel(c) for every channel, in parallel (at least kGrain values a task).
template <typename F>
void for_channels(const Layout& L, const F& per_channel) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, L.n * L.s));
  at::parallel_for(0, L.c, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) per_channel(c);
  });
}

// Two-pass (mean, m2) in double of `rows` rows of C values starting at p, merged into
// (count, mean, m2): the rows layout's tail.
template <typename T>
void merge_rows(const T* p, int64_t rows, int64_t C, double* count, double* mean, double* m2) {
  if (rows == 0) return;
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0, sq = 0;
    for (int64_t r = 0; r < rows; ++r) sum += p[r * C + c];
    const double mb = sum / rows;
    for (int64_t r = 0; r < rows; ++r) sq += (p[r * C + c] - mb) * (p[r * C + c] - mb);
    merge(count[c], mean[c], m2[c], static_cast<double>(rows), mb, sq);
  }
}

template <typename T>
void stats_rows(const T* x, const Layout& L, double* mean, double* m2) {
  const int64_t C = L.c, W = L.w;
  const int64_t nchunks = chunks_for(wide_rows(L), W);
  // The shift K per column: its channel's value in row 0 (0 where that is not finite, so that
  // an inf in the data still sums to inf, not to inf - inf). Blocks sum x - K in T, which is
  // exact where x is within a factor 2 of K (Sterbenz), i.e. wherever |mean| >> std.
  std::vector<T> shift(W);
  for (int64_t j = 0; j < W; ++j) shift[j] = std::isfinite(x[j % C]) ? x[j % C] : T(0);
  const T* K = shift.data();
  // Per chunk: count, then mean - K[W], m2[W] per column of the wide rows, in double.
  std::vector<double> cnt(nchunks, 0.0), mu(nchunks * W, 0.0), acc(nchunks * W, 0.0);
  // Each block (in L1) gets its exact two-pass mean - K and m2 in T, at full SIMD width, then
  // is merged into its chunk's double accumulators.
  for_row_blocks(L, nchunks, kStatRows, [&](int64_t k, int64_t b0, int64_t b1) {
    const auto [bm, bq] = zeroed_rows<T>(W);  // block mean - K and m2, per column
    const T nb = static_cast<T>(b1 - b0);
    for_column_blocks(W, [&]<int64_t N>(int64_t j0, int64_t n) {
      block_stats<N>(x, W, b0, b1, j0, n, K, bm, bq);
    });
    // merge() per column, its per-block factors hoisted out of the column loop.
    double* cm = mu.data() + k * W;
    double* ca = acc.data() + k * W;
    const double count = cnt[k], total = count + nb;
    const double f = count / total, f_b = nb / total, f_m2 = count * nb / total;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      const double delta = bm[j] - cm[j];
      cm[j] = merged_mean(cm[j], bm[j], f, f_b);
      ca[j] += bq[j] + between(delta, f_m2);
    }
    cnt[k] = total;
  });
  // Chunks in order; a chunk's k columns of channel c hold equally many values (and share K),
  // so they combine as mean = average of their means, m2 = sum (m2_t + n (mean_t - mean)^2).
  std::vector<double> count(C, 0.0), m(C, 0.0), a(C, 0.0), cm(C), ca(C);
  for (int64_t k = 0; k < nchunks; ++k) {
    if (cnt[k] == 0) continue;
    const double* km = mu.data() + k * W;
    const double* ka = acc.data() + k * W;
    std::fill(cm.begin(), cm.end(), 0.0);
    std::fill(ca.begin(), ca.end(), 0.0);
    for (int64_t t = 0; t < L.k; ++t)
      for (int64_t c = 0; c < C; ++c) cm[c] += km[t * C + c];
    for (int64_t c = 0; c < C; ++c) cm[c] /= static_cast<double>(L.k);
    for (int64_t t = 0; t < L.k; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const double d = km[t * C + c] - cm[c];
        ca[c] += ka[t * C + c] + between(d, cnt[k]);
      }
    for (int64_t c = 0; c < C; ++c) merge(count[c], m[c], a[c], cnt[k] * L.k, cm[c], ca[c]);
  }
  for (int64_t c = 0; c < C; ++c) m[c] += K[c];  // mean - K -> mean, in double
  merge_rows(x + wide_rows(L) * W, tail_rows(L), C, count.data(), m.data(), a.data());
  std::copy(m.begin(), m.end(), mean);
  std::copy(a.begin(), a.end(), m2);
}

// ---- elementwise passes ------------------------------------------------------------------
// A segment is a contiguous run of values: a plane (S values of one channel; segment n * C + c)
// or a wide row (k rows; the last one is short when there are tail rows), whose per-channel
// values are passed laid out per column (see per_column). Each pass is a functor that fills
// one segment, so that it can run over all segments (for_segments) or over one channel's
// planes right after that channel's reduction (planes layout, see forward_train).
inline int64_t segment_length(const Layout& L) { return L.rows ? L.w : L.s; }
inline int64_t segment_count(const Layout& L) {
  return L.rows ? wide_rows(L) + (tail_rows(L) > 0) : L.n * L.c;
}
// Values in segment i: segment_length, except a short last wide row.
inline int64_t segment_size(const Layout& L, int64_t i) {
  return L.rows ? std::min(L.w, (L.n * L.s - i * L.k) * L.c) : L.s;
}

// seg(i) for every segment, in parallel chunks that hold at least kGrain values.
template <typename F>
void for_segments(const Layout& L, const F& seg) {
  // (callers never pass an empty tensor; the max keeps a zero length from dividing)
  at::parallel_for(0, segment_count(L),
                   std::max<int64_t>(1, kGrain / std::max<int64_t>(1, segment_length(L))),
                   [&](int64_t i0, int64_t i1) {
                     for (int64_t i = i0; i < i1; ++i) seg(i);
                   });
}

// Planes layout: whether to write each channel right after its reduction, in the same
// parallel loop over channels (its values re-read from cache), or to write all planes in a
// second loop of its own. The first runs only as many tasks as channels: with fewer than two
// channels a thread (C = 1 or 3 on 2+ threads) it would leave threads idle in the pass that
// the second spreads over all N * C planes.
inline bool channel_at_a_time(const Layout& L) { return L.c >= 2 * at::get_num_threads(); }

// Planes layout: the planes of channel c, last batch element first (the reverse of the order
// in which the reduction just read them, so the most recently read come from cache first).
template <typename F>
void channel_planes(const Layout& L, int64_t c, const F& seg) {
  for (int64_t n = L.n - 1; n >= 0; --n) seg(n * L.c + c);
}

// relu as torch's: NaN passes through (NaN < 0 is false).
template <int64_t kAct, typename T>
inline T activate(T z) {
  if constexpr (kAct == kSigmoid) return sigmoid(z);
  if constexpr (kAct == kRelu) return z < T(0) ? T(0) : z;
  return z;
}

// y = act((x - mean) * scale + shift), per channel.
template <int64_t kAct, typename T>
struct Normalize {
  const T* x;
  T* y;
  Layout L;
  const T *mean, *scale, *shift;

  void operator()(int64_t i) const {
    const int64_t len = segment_length(L);
    const T* p = x + i * len;
    T* q = y + i * len;
    if (L.rows) {
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c)
        q[c] = activate<kAct>((p[c] - mean[c]) * scale[c] + shift[c]);
      return;
    }
    const int64_t c = i % L.c;
    const T m = mean[c], k = scale[c], b = shift[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) q[j] = activate<kAct>((p[j] - m) * k + b);
  }
};

// y = avg_pool_2x2(sigmoid((x - mean) * scale + shift)), planes layout, H and W even.
template <typename T>
struct NormalizeSigmoidPool {
  const T* x;
  T* y;
  Layout L;
  int64_t W;
  const T *mean, *scale, *shift;

  void operator()(int64_t i) const {
    const int64_t S = L.s, Wo = W / 2;
    thread_local std::vector<T> rows;  // sigmoid of two input rows
    rows.resize(2 * W);
    T* a = rows.data();
    const int64_t c = i % L.c;
    const T m = mean[c], k = scale[c], b = shift[c];
    for (int64_t h = 0; h < S / W; h += 2) {
      const T* p = x + i * S + h * W;  // rows h and h + 1: 2W contiguous values
#pragma omp simd
      for (int64_t j = 0; j < 2 * W; ++j) a[j] = sigmoid((p[j] - m) * k + b);
      T* q = y + i * (S / 4) + (h / 2) * Wo;
      for (int64_t j = 0; j < Wo; ++j)
        q[j] = (a[2 * j] + a[2 * j + 1] + a[W + 2 * j] + a[W + 2 * j + 1]) * T(0.25);
    }
  }
};

// fn(seg) with the forward's segment functor for (act, pool).
template <typename T, typename F>
void with_forward_pass(const T* x, T* y, const Layout& L, int64_t W, int64_t act, int64_t pool,
                       const T* mean, const T* scale, const T* shift, const F& fn) {
  if (pool == 2) fn(NormalizeSigmoidPool<T>{x, y, L, W, mean, scale, shift});
  else if (act == kSigmoid) fn(Normalize<kSigmoid, T>{x, y, L, mean, scale, shift});
  else if (act == kRelu) fn(Normalize<kRelu, T>{x, y, L, mean, scale, shift});
  else fn(Normalize<kIdentity, T>{x, y, L, mean, scale, shift});
}

// dz for segment i, where out = pool(sigmoid(z)): grad_out spread over each 2x2 window
// (pool = 2) or taken as is (pool = 1), times sigmoid'(z) = s (1 - s), s recomputed from x.
template <typename T>
struct SigmoidGrad {
  const T* dy;
  const T* x;
  T* dz;
  Layout L;
  int64_t W, pool;
  const T *mean, *scale, *shift;

  void operator()(int64_t i) const {
    const int64_t len = segment_length(L);
    const T* p = x + i * len;
    T* q = dz + i * len;
    if (L.rows) {
      const T* g = dy + i * len;
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const T sg = sigmoid((p[c] - mean[c]) * scale[c] + shift[c]);
        q[c] = g[c] * sg * (1 - sg);
      }
      return;
    }
    const int64_t c = i % L.c;
    const T m = mean[c], k = scale[c], b = shift[c];
    if (pool == 1) {
      const T* g = dy + i * len;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const T sg = sigmoid((p[j] - m) * k + b);
        q[j] = g[j] * sg * (1 - sg);
      }
      return;
    }
    thread_local std::vector<T> spread;  // a pooled gradient row spread over two input rows
    spread.resize(2 * W);
    T* e = spread.data();
    const int64_t Wo = W / 2;
    const T* g = dy + i * (len / 4);
    for (int64_t h = 0; h < len / W; h += 2) {
      const T* gr = g + (h / 2) * Wo;
      for (int64_t w = 0; w < Wo; ++w) {
        const T v = gr[w] * T(0.25);
        e[2 * w] = e[2 * w + 1] = e[W + 2 * w] = e[W + 2 * w + 1] = v;
      }
#pragma omp simd
      for (int64_t j = 0; j < 2 * W; ++j) {
        const T sg = sigmoid((p[h * W + j] - m) * k + b);
        q[h * W + j] = e[j] * sg * (1 - sg);
      }
    }
  }
};

// dz for segment i, where out = relu(z): grad_out where z > 0, else 0 (torch's
// threshold_backward on the output: a NaN z keeps its gradient), z recomputed from x with the
// forward's arithmetic, so the mask is the forward's.
template <typename T>
struct ReluGrad {
  const T* dy;
  const T* x;
  T* dz;
  Layout L;
  const T *mean, *scale, *shift;

  void operator()(int64_t i) const {
    const int64_t len = segment_length(L);
    const T* p = x + i * len;
    const T* g = dy + i * len;
    T* q = dz + i * len;
    if (L.rows) {
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c)
        q[c] = (p[c] - mean[c]) * scale[c] + shift[c] <= T(0) ? T(0) : g[c];
      return;
    }
    const int64_t c = i % L.c;
    const T m = mean[c], k = scale[c], b = shift[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) q[j] = (p[j] - m) * k + b <= T(0) ? T(0) : g[j];
  }
};

// Without an activation dz is grad_out itself: nothing to prepare.
struct NoPrepare {
  void operator()(int64_t) const {}
};

// ---- backward sums: sum_g = sum dz, sum_gd = sum dz * (x - mean) --------------------------
// prepare(i) fills segment i of dz just before it is summed (so a computed dz is summed while
// it is still in L1, in the same pass).

// Planes layout: channel c's sums over its N planes.
template <typename T, typename P>
void plane_grad_sums(const T* dz, const T* x, const Layout& L, int64_t c, double m,
                     double* sum_g, double* sum_gd, const P& prepare) {
  const int64_t S = L.s;
  double sg = 0, sgd = 0;
  for (int64_t n = 0; n < L.n; ++n) {
    prepare(n * L.c + c);
    const int64_t off = (n * L.c + c) * S;
    const T* g = dz + off;
    const T* p = x + off;
    if (n + 1 < L.n) {
      prefetch(g + L.c * S, S);
      prefetch(p + L.c * S, S);
    }
    sg += plane_sum(S, [g](int64_t j) { return static_cast<double>(g[j]); });
    sgd += plane_sum(S, [g, p, m](int64_t j) { return static_cast<double>(g[j]) * (p[j] - m); });
  }
  *sum_g = sg;
  *sum_gd = sgd;
}

// Rows layout: the sums over all rows, per channel.
template <typename T, typename P>
void row_grad_sums(const T* dz, const T* x, const Layout& L, const T* mean, double* sum_g,
                   double* sum_gd, const P& prepare) {
  const int64_t C = L.c, W = L.w;
  const int64_t nchunks = chunks_for(wide_rows(L), W);
  std::vector<double> a(nchunks * W, 0.0), b(nchunks * W, 0.0);
  // Sums of kSubRows wide rows in T (full SIMD width), each added into double accumulators.
  for_row_blocks(L, nchunks, kSubRows, [&](int64_t k, int64_t b0, int64_t b1) {
    const auto [fa, fb] = zeroed_rows<T>(W);  // block sums of dz and dz * (x - mean)
    for (int64_t r = b0; r < b1; ++r) prepare(r);
    for_column_blocks(W, [&]<int64_t N>(int64_t j0, int64_t n) {
      block_grad_sums<N>(dz, x, W, b0, b1, j0, n, mean, fa, fb);
    });
    double* ak = a.data() + k * W;
    double* bk = b.data() + k * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      ak[j] += fa[j];
      bk[j] += fb[j];
    }
  });
  // Chunks in order, each column into its channel; then the tail rows (one short segment).
  std::fill(sum_g, sum_g + C, 0.0);
  std::fill(sum_gd, sum_gd + C, 0.0);
  for (int64_t k = 0; k < nchunks; ++k)
    for (int64_t j = 0; j < W; j += C)
      for (int64_t c = 0; c < C; ++c) {
        sum_g[c] += a[k * W + j + c];
        sum_gd[c] += b[k * W + j + c];
      }
  const int64_t full = wide_rows(L), tail = tail_rows(L);
  if (tail > 0) {
    prepare(full);
    const T* g = dz + full * W;
    const T* p = x + full * W;
    for (int64_t r = 0; r < tail; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = r * C + c;
        sum_g[c] += g[j];
        sum_gd[c] += static_cast<double>(g[j]) * (p[j] - mean[j]);
      }
  }
}

// ---- dx = (dz - mean_g - (x - mean) * proj) * scale; in eval dx = dz * scale -------------
// (In eval x is not read: with an inf or NaN x, (x - mean) * 0 would make dx NaN where torch's
// gradient, dz * scale, is finite.)

template <typename T>
struct InputGrad {
  const T* dz;
  const T* x;
  T* dx;
  Layout L;
  const T *mean, *mean_g, *proj, *scale;
  bool train;

  void operator()(int64_t i) const {
    const int64_t len = segment_length(L);
    const T* g = dz + i * len;
    const T* p = x + i * len;
    T* q = dx + i * len;
    if (!train) {
      if (L.rows) {
        const int64_t n = segment_size(L, i);
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) q[c] = g[c] * scale[c];
        return;
      }
      const T k = scale[i % L.c];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) q[j] = g[j] * k;
      return;
    }
    if (L.rows) {
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c)
        q[c] = (g[c] - mean_g[c] - (p[c] - mean[c]) * proj[c]) * scale[c];
      return;
    }
    const int64_t c = i % L.c;
    const T m = mean[c], mg = mean_g[c], pr = proj[c], k = scale[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) q[j] = (g[j] - mg - (p[j] - m) * pr) * k;
  }
};

// ---- ops ---------------------------------------------------------------------------------

// Per-channel (C,) vector of x's dtype, or `fill` where the tensor is absent.
at::Tensor channel_vector(const c10::optional<at::Tensor>& t, const at::Tensor& x,
                          double fill) {
  if (t.has_value() && t->defined()) return t->contiguous().view({-1});
  return at::full({x.size(1)}, fill, x.options());
}

at::Tensor output_for(const at::Tensor& x, int64_t pool) {
  if (pool == 1) return at::empty_like(x);
  return at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options());
}

// Per-channel values as the elementwise passes read them: by channel (planes), or by column
// of a wide row, channel j % C (rows).
template <typename T>
std::vector<T> per_column(const Layout& L, const T* v) {
  std::vector<T> out(L.rows ? L.w : L.c);
  for (size_t j = 0; j < out.size(); j += L.c) std::copy(v, v + L.c, out.data() + j);
  return out;
}

// Training forward: batch statistics, y, and (last) the running-statistics update.
// Returns (y, mean, invstd), mean and invstd as (C,) tensors of x's dtype.
// Planes: one parallel loop over channels computes a channel's statistics and then writes its
// output planes, which re-reads the N * S values just read from cache (L2 when a channel holds
// up to ~1 MB: (64, 64, 56, 56) float32 has 0.8 MB a channel), so x comes from memory once.
// Rows: the statistics need every row before any output: x is read twice.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, double momentum, double eps, int64_t act,
    int64_t pool) {
  const Layout L = layout_of(x);
  const int64_t C = L.c;
  const int64_t W = x.dim() == 4 ? x.size(3) : 1;
  const double count = static_cast<double>(L.n * L.s);
  std::vector<double> mean(C), m2(C);
  at::Tensor y = output_for(x, pool);
  at::Tensor mean_t = at::empty({C}, x.options());
  at::Tensor invstd_t = at::empty({C}, x.options());
  const at::Tensor w = channel_vector(weight, x, 1.0);
  const at::Tensor b = channel_vector(bias, x, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_train", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* mp = mean_t.mutable_data_ptr<scalar_t>();
    scalar_t* ip = invstd_t.mutable_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    std::vector<scalar_t> center(C), scale(C), shift(C);
    const auto finish = [&](int64_t c) {  // channel c's mean, invstd and affine form
      m2[c] = as_aten_m2<scalar_t>(m2[c]);
      mp[c] = static_cast<scalar_t>(mean[c]);
      ip[c] = static_cast<scalar_t>(1.0 / std::sqrt(m2[c] / count + eps));
      scale[c] = ip[c] * wp[c];
      torch_affine(mp[c], scale[c], bp[c], &center[c], &shift[c]);
    };
    if (!L.rows) {
      const bool at_once = channel_at_a_time(L);
      with_forward_pass(xp, yp, L, W, act, pool, center.data(), scale.data(), shift.data(),
                        [&](const auto& seg) {
        for_channels(L, [&](int64_t c) {
          plane_stats(xp, L, c, &mean[c], &m2[c]);
          finish(c);
          if (at_once) channel_planes(L, c, seg);
        });
        if (!at_once) for_segments(L, seg);
      });
    } else {
      stats_rows(xp, L, mean.data(), m2.data());
      for (int64_t c = 0; c < C; ++c) finish(c);
      const auto mc = per_column(L, center.data()), kc = per_column(L, scale.data()),
                 bc = per_column(L, shift.data());
      with_forward_pass(xp, yp, L, W, act, pool, mc.data(), kc.data(), bc.data(),
                        [&](const auto& seg) { for_segments(L, seg); });
    }
    // Last, once nothing can fail any more: running <- (1 - m) running + m batch.
    if (running_mean.has_value() && running_mean->defined()) {
      scalar_t* rm = running_mean->mutable_data_ptr<scalar_t>();
      scalar_t* rv = running_var->mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t unbiased = static_cast<scalar_t>(m2[c] / (count - 1));
        rm[c] = (1 - momentum) * rm[c] + momentum * mp[c];
        rv[c] = (1 - momentum) * rv[c] + momentum * unbiased;
      }
    }
  });
  return {y, mean_t, invstd_t};
}

// Evaluation forward with given statistics. Returns (y, invstd).
std::tuple<at::Tensor, at::Tensor> forward_eval(const at::Tensor& x,
                                                const c10::optional<at::Tensor>& weight,
                                                const c10::optional<at::Tensor>& bias,
                                                const at::Tensor& mean, const at::Tensor& var,
                                                double eps, int64_t act, int64_t pool) {
  const Layout L = layout_of(x);
  const int64_t C = L.c;
  const int64_t W = x.dim() == 4 ? x.size(3) : 1;
  at::Tensor y = output_for(x, pool);
  at::Tensor invstd_t = at::empty({C}, x.options());
  const at::Tensor w = channel_vector(weight, x, 1.0);
  const at::Tensor b = channel_vector(bias, x, 0.0);
  const at::Tensor m = mean.contiguous();
  const at::Tensor v = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_eval", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* ip = invstd_t.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> center(C), scale(C), shift(C);
    for (int64_t c = 0; c < C; ++c) {
      ip[c] = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(vp[c]) + eps));
      scale[c] = ip[c] * wp[c];
      torch_affine(mp[c], scale[c], bp[c], &center[c], &shift[c]);
    }
    const auto mc = per_column(L, center.data()), kc = per_column(L, scale.data()),
               bc = per_column(L, shift.data());
    with_forward_pass(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), L, W, act,
                      pool, mc.data(), kc.data(), bc.data(),
                      [&](const auto& seg) { for_segments(L, seg); });
  });
  return {y, invstd_t};
}

// Backward. Returns (dx or an empty tensor, sum dz = dL/dbeta, sum dz * x_hat = dL/dgamma),
// where dz is the gradient at the normalization's output (grad_out itself without epilogue).
// train: the statistics were the batch's own (full closed form); else constants.
// As in the forward: planes run a channel's sums and then its dx planes in one parallel loop
// over channels (dz and x re-read from cache); rows make a second pass for dx.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool train, bool need_input_grad, int64_t act, int64_t pool) {
  const Layout L = layout_of(x);
  const int64_t C = L.c;
  const int64_t W = x.dim() == 4 ? x.size(3) : 1;
  const double count = static_cast<double>(L.n * L.s);
  const at::Tensor w = channel_vector(weight, x, 1.0);
  const at::Tensor b = channel_vector(bias, x, 0.0);
  const at::Tensor m = mean.contiguous();
  const at::Tensor is = invstd.contiguous();
  at::Tensor sum_g_t = at::empty({C}, x.options());
  at::Tensor sum_gx_t = at::empty({C}, x.options());
  // dz: grad_out laid out like x, or (with an activation) its gradient at the norm's output,
  // computed into the buffer that then becomes dx in place.
  at::Tensor dz = act == kIdentity ? like(grad_out, x) : at::empty_like(x);
  at::Tensor dx;
  if (need_input_grad) dx = act == kIdentity ? at::empty_like(x) : dz;
  else dx = at::empty({0}, x.options());
  // grad_out as the activation's gradient reads it: laid out like x, or pooled (contiguous).
  const at::Tensor g = act == kIdentity ? dz : pool == 1 ? like(grad_out, x)
                                                         : grad_out.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_backward", [&] {
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* ip = is.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* dzp = dz.const_data_ptr<scalar_t>();  // (grad_out itself without act)
    scalar_t* dzw = act == kIdentity ? nullptr : dz.mutable_data_ptr<scalar_t>();
    scalar_t* dxp = need_input_grad ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    std::vector<scalar_t> center(C), scale(C), shift(C);  // z as the forward computed it
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = ip[c] * wp[c];
      torch_affine(mp[c], scale[c], bp[c], &center[c], &shift[c]);
    }
    const auto mean_col = per_column(L, mp), scale_col = per_column(L, scale.data()),
               center_col = per_column(L, center.data()),
               shift_col = per_column(L, shift.data());
    scalar_t* sgp = sum_g_t.mutable_data_ptr<scalar_t>();
    scalar_t* sxp = sum_gx_t.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> mean_g(C, 0), proj(C, 0);
    // Channel c's outputs from its sums: dL/dbeta, dL/dgamma and dx's coefficients.
    const auto finish = [&](int64_t c, double sg, double sgd) {
      const double inv = ip[c];
      sgp[c] = static_cast<scalar_t>(sg);
      sxp[c] = static_cast<scalar_t>(sgd * inv);  // sum dz * x_hat
      if (train) {
        mean_g[c] = static_cast<scalar_t>(sg / count);
        proj[c] = static_cast<scalar_t>(sgd * inv * inv / count);
      }
    };
    // (dx may be dz's buffer: each element is read, then written)
    const auto run = [&](const auto& prepare) {
      if (!L.rows) {
        const InputGrad<scalar_t> grad{dzp, xp, dxp, L, mean_col.data(), mean_g.data(),
                                       proj.data(), scale_col.data(), train};
        const bool at_once = channel_at_a_time(L);
        for_channels(L, [&](int64_t c) {
          double sg = 0, sgd = 0;
          plane_grad_sums(dzp, xp, L, c, mean_col[c], &sg, &sgd, prepare);
          finish(c, sg, sgd);
          if (need_input_grad && at_once) channel_planes(L, c, grad);
        });
        if (need_input_grad && !at_once) for_segments(L, grad);
        return;
      }
      std::vector<double> sg(C), sgd(C);
      row_grad_sums(dzp, xp, L, mean_col.data(), sg.data(), sgd.data(), prepare);
      for (int64_t c = 0; c < C; ++c) finish(c, sg[c], sgd[c]);
      if (need_input_grad) {
        const auto mg = per_column(L, mean_g.data()), pr = per_column(L, proj.data());
        for_segments(L, InputGrad<scalar_t>{dzp, xp, dxp, L, mean_col.data(), mg.data(),
                                            pr.data(), scale_col.data(), train});
      }
    };
    // dz computed segment by segment inside the reduction pass, where there is an activation
    if (act == kSigmoid)
      run(SigmoidGrad<scalar_t>{gp, xp, dzw, L, W, pool, center_col.data(), scale_col.data(),
                                shift_col.data()});
    else if (act == kRelu)
      run(ReluGrad<scalar_t>{gp, xp, dzw, L, center_col.data(), scale_col.data(),
                             shift_col.data()});
    else
      run(NoPrepare{});
  });
  return {dx, sum_g_t, sum_gx_t};
}

// ---- argument checks -----------------------------------------------------------------------
// The operators below can be called by anyone (torch.ops.bnlab.*), so each one checks every
// tensor it dereferences: any input reachable from Python raises a Python exception (with
// torch's exception type where torch has one), never a signal. Layouts the kernels do not walk
// (transposed, strided, overlapping) are copied to a dense one first.

const char* const kOp = "bnlab::batch_norm: ";

bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Layouts whose memory is not the dense array of values that the kernels walk: refused by
// every entry before any element is read (a nested tensor's buffer read as dense returned
// values from memory the operator does not own). Meta and fake tensors pass: the fake
// implementations serve them (bnlab/norm/kernels/ops.py). NotImplementedError, as torch's
// dispatcher raises for a layout that an operator has no kernel for.
void check_layout(const at::Tensor& t, const char* name) {
  if (!t.defined()) return;
  TORCH_CHECK_NOT_IMPLEMENTED(!t.is_nested(), kOp, name, " is a nested tensor; the operator "
                              "takes dense tensors: pad it first, e.g. t.to_padded_tensor(0.0)");
  TORCH_CHECK_NOT_IMPLEMENTED(t.layout() == at::kStrided, kOp, name, " has layout ",
                              t.layout(), "; the operator takes dense (strided) tensors: "
                              "convert it with t.to_dense()");
  TORCH_CHECK_NOT_IMPLEMENTED(!t.is_quantized(), kOp, name, " is a quantized tensor; the "
                              "operator takes float32 or float64 values: convert it with "
                              "t.dequantize()");
  TORCH_CHECK_NOT_IMPLEMENTED(!t._is_zerotensor(), kOp, name, " is a ZeroTensor with no "
                              "memory; pass torch.zeros(...) instead");
  TORCH_CHECK_NOT_IMPLEMENTED(!t.is_neg() && !t.is_conj(), kOp, name, " is a lazily negated "
                              "or conjugated view; materialize it first with "
                              "t.resolve_neg().resolve_conj()");
}
void check_layout(const c10::optional<at::Tensor>& t, const char* name) {
  if (present(t)) check_layout(*t, name);
}

void check_input(const at::Tensor& x, int64_t act, int64_t pool) {
  TORCH_CHECK_VALUE(x.defined(), kOp, "the input is an undefined tensor");
  check_layout(x, "the input");
  TORCH_CHECK_VALUE(x.dim() >= 2, kOp, "expected an input of shape (N, C, *) with at least 2 "
                    "dims, got ", x.dim(), " dims");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, kOp,
                   "the CPU kernels take float32 or float64 input, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided, kOp,
              "the kernels take a dense CPU tensor, got one on ", x.device());
  TORCH_CHECK_VALUE(act == kIdentity || act == kSigmoid || act == kRelu, kOp,
                    "act must be 0 (identity), 1 (sigmoid) or 2 (relu), got ", act);
  TORCH_CHECK_VALUE(pool == 1 || pool == 2, kOp, "pool must be 1 or 2, got ", pool);
  TORCH_CHECK_VALUE(pool == 1 || (act == kSigmoid && x.dim() == 4 && x.size(2) % 2 == 0 &&
                                  x.size(3) % 2 == 0),
                    kOp, "pool=2 needs act=1 and a 4-D input with even height and width, got "
                    "shape ", x.sizes());
}

// A per-channel tensor: C values of x's dtype on the CPU (any shape or strides).
void check_vector(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!present(t)) return;
  check_layout(*t, name);
  TORCH_CHECK(t->numel() == x.size(1), name, " should contain ", x.size(1), " elements not ",
              t->numel());
  TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), kOp, name, " is ", t->scalar_type(),
                   " but the input is ", x.scalar_type());
  TORCH_CHECK(t->device().is_cpu() && t->layout() == at::kStrided, kOp, name,
              " must be a dense CPU tensor, got one on ", t->device());
}

void check_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                   const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& running_mean,
                   const c10::optional<at::Tensor>& running_var, bool train, double eps,
                   int64_t act, int64_t pool) {
  check_input(x, act, pool);
  check_vector(weight, "weight", x);
  check_vector(bias, "bias", x);
  check_vector(running_mean, "running_mean", x);
  check_vector(running_var, "running_var", x);
  TORCH_CHECK_VALUE(present(running_mean) == present(running_var), "running_mean and "
                    "running_var must either both be None or neither be None");
  TORCH_CHECK(train || present(running_mean), "running_mean must be defined in evaluation mode");
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), kOp, "eps must be finite and >= 0, got ",
                    eps);
  // Buffers written in place must not have two elements on one address (an expanded
  // tensor): checked before anything is computed, so a refused call writes nothing.
  for (const auto* t : {&running_mean, &running_var})
    if (train && present(*t)) at::assert_no_internal_overlap(**t);
  const int64_t per_channel = x.size(1) == 0 ? 0 : x.numel() / x.size(1);
  TORCH_CHECK_VALUE(!train || per_channel != 1, "Expected more than 1 value per channel when "
                    "training, got input size ", x.sizes());
}

// x as the kernels walk it: contiguous or channels_last(_3d); contiguous for pooling.
at::Tensor dense(const at::Tensor& x, int64_t pool) {
  if (x.is_contiguous()) return x;
  if (pool == 1 && ((x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                    (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))))
    return x;
  return x.contiguous();
}

// ---- operators -----------------------------------------------------------------------------
// Registered with PyTorch's dispatcher (namespace bnlab), so that autograd, jit.trace,
// torch.export, torch.compile and torch.func see them as operators (bnlab/norm/kernels/ops.py
// registers their fake implementations, used to trace without data):
//
//   batch_norm_forward   (y, mean, invstd): y = pool(act(BatchNorm(x))); in training the batch
//                        statistics, folded into the running buffers in place (last); in eval
//                        a copy of the running mean and 1 / sqrt(running_var + eps)
//   batch_norm_backward  (dx, or an empty tensor when not needed; dL/dbias = sum dz;
//                        dL/dweight = sum dz * x_hat), dz the gradient at BatchNorm's output
//   batch_norm           the differentiable entry: y, with an autograd node over the two

// `stats`: also return the statistics (the forward operator's contract); without, an eval
// call's mean is left undefined instead of copied (the no-gradient entry needs only y).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_checked(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool, bool stats) {
  check_forward(input, weight, bias, running_mean, running_var, train, eps, act, pool);
  const at::Tensor x = dense(input, pool);
  const int64_t C = x.size(1);
  if (x.numel() == 0) {  // nothing to walk (N, C or a spatial size is 0); buffers untouched
    if (!train)
      return {output_for(x, pool), running_mean->contiguous().view({-1}).clone(),
              (running_var->contiguous().view({-1}) + eps).rsqrt()};
    return {output_for(x, pool), at::zeros({C}, x.options()),
            at::full({C}, 1.0 / std::sqrt(1.0 + eps), x.options())};
  }
  if (!train) {
    const at::Tensor mean = running_mean->contiguous().view({-1});
    auto [y, invstd] = forward_eval(x, weight, bias, mean, *running_var, eps, act, pool);
    return {y, stats ? mean.clone() : at::Tensor(), invstd};
  }
  if (!present(running_mean))
    return forward_train(x, weight, bias, c10::nullopt, c10::nullopt, momentum, eps, act, pool);
  // The kernels write the buffers as C contiguous values: a strided buffer goes through a copy.
  at::Tensor rm = running_mean->contiguous(), rv = running_var->contiguous();
  auto out = forward_train(x, weight, bias, rm, rv, momentum, eps, act, pool);
  if (!rm.is_same(*running_mean)) running_mean->copy_(rm.view(running_mean->sizes()));
  if (!rv.is_same(*running_var)) running_var->copy_(rv.view(running_var->sizes()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> op_forward(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool) {
  return forward_checked(input, weight, bias, running_mean, running_var, train, momentum, eps,
                         act, pool, /*stats=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> op_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool train, int64_t act, int64_t pool, bool need_input_grad) {
  check_input(input, act, pool);
  check_vector(weight, "weight", input);
  check_vector(bias, "bias", input);
  check_vector(mean, "mean", input);
  check_vector(invstd, "invstd", input);
  TORCH_CHECK_VALUE(grad_out.defined(), kOp, "grad_out is an undefined tensor");
  check_layout(grad_out, "grad_out");
  const at::Tensor x = dense(input, pool);
  std::vector<int64_t> expected = x.sizes().vec();  // the output's shape
  if (pool == 2) expected = {x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected), kOp, "grad_out has shape ",
              grad_out.sizes(), " but the output has shape ", at::IntArrayRef(expected));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), kOp, "grad_out is ",
                   grad_out.scalar_type(), " but the input is ", x.scalar_type());
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.layout() == at::kStrided, kOp,
              "grad_out must be a dense CPU tensor");
  if (x.numel() == 0) {
    const int64_t C = x.size(1);
    return {need_input_grad ? at::empty_like(x) : at::empty({0}, x.options()),
            at::zeros({C}, x.options()), at::zeros({C}, x.options())};
  }
  return kernel_backward(grad_out, x, weight, bias, mean.contiguous().view({-1}),
                         invstd.contiguous().view({-1}), train, need_input_grad, act, pool);
}

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// ---- autograd --------------------------------------------------------------------------------
// The node is C++ because a Python autograd.Function costs about 20 us per forward and backward,
// as long as the kernels themselves on LeNet's small layers. Its backward is the backward
// operator; under create_graph (double backward) it calls instead the differentiable gradients
// that the layers register from Python (bnlab/norm/kernels/ops.py, register_double_backward).

py::object* g_double_backward = nullptr;  // never freed: it must outlive the interpreter

at::Tensor or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}
c10::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

using ForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool, double, double,
    int64_t, int64_t);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, bool, int64_t,
    int64_t, bool);
using EntryFn = at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                          const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                          const c10::optional<at::Tensor>&, bool, double, double, int64_t,
                          int64_t);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool) {
  static auto op = find_op("bnlab::batch_norm_forward").typed<ForwardFn>();
  return op.call(x, weight, bias, running_mean, running_var, train, momentum, eps, act, pool);
}

struct BatchNormNode : public torch::autograd::Function<BatchNormNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& running_mean,
                            const c10::optional<at::Tensor>& running_var, bool train,
                            double momentum, double eps, int64_t act, int64_t pool) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, invstd] = call_forward(x, weight, bias, running_mean, running_var, train,
                                          momentum, eps, act, pool);
    ctx->save_for_backward({x, or_undefined(weight), or_undefined(bias), mean, invstd});
    ctx->saved_data["train"] = train;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["pool"] = pool;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &b = saved[2];
    const bool train = ctx->saved_data["train"].toBool();
    const int64_t act = ctx->saved_data["act"].toInt(), pool = ctx->saved_data["pool"].toInt();
    // needs_input_grad counts the defined tensor inputs: x, then weight and bias if given.
    size_t edge = 0;
    const bool need_x = ctx->needs_input_grad(edge++);
    const bool need_w = w.defined() && ctx->needs_input_grad(edge++);
    const bool need_b = b.defined() && ctx->needs_input_grad(edge++);
    at::Tensor gx, gw, gb;
    if (at::GradMode::is_enabled()) {  // create_graph: the gradient needs a graph of its own
      TORCH_CHECK(g_double_backward != nullptr,
                  kOp, "no double-backward function registered");
      py::gil_scoped_acquire gil;
      auto r = (*g_double_backward)(grads[0], x, or_none(w), or_none(b), saved[3], saved[4],
                                    train, ctx->saved_data["eps"].toDouble(), act, pool,
                                    std::make_tuple(need_x, need_w, need_b))
                   .cast<std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                                    c10::optional<at::Tensor>>>();
      gx = or_undefined(std::get<0>(r));
      gw = or_undefined(std::get<1>(r));
      gb = or_undefined(std::get<2>(r));
    } else {
      static auto op = find_op("bnlab::batch_norm_backward").typed<BackwardFn>();
      auto [dx, sum_g, sum_gx] = op.call(grads[0], x, or_none(w), or_none(b), saved[3],
                                         saved[4], train, act, pool, need_x);
      if (need_x) gx = dx;
      if (need_w) gw = sum_gx;
      if (need_b) gb = sum_g;
    }
    // One entry per forward argument; the non-tensor ones and the buffers get none.
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

bool requires_grad(const c10::optional<at::Tensor>& t) {
  return present(t) && t->requires_grad();
}

// What every operator checks at its autograd entry, before anything is computed: the layouts
// it refuses (check_layout), and forward-mode AD, for which the operators have no rule (a
// tangent would silently be dropped): such calls belong to ATen, which has one; refused with
// torch's NotImplementedError for an operator without a forward-mode formula.
// `tensors` and `names` are the operator's tensor arguments, in order.
void check_entry(const char* op, std::initializer_list<const c10::optional<at::Tensor>*> tensors,
                 std::initializer_list<const char*> names) {
  auto name = names.begin();
  for (const auto* t : tensors) {
    check_layout(*t, *name);
    TORCH_CHECK_NOT_IMPLEMENTED(
        !present(*t) || !(*t)->_fw_grad(/*level=*/0).defined(), "Trying to use forward AD "
        "with bnlab::", op, " that does not support it (", *name, " carries a tangent: "
        "torch.func.jvp or a dual tensor); call torch.nn.functional.batch_norm, or "
        "bnlab.norm.functional.batch_norm, which gives such calls to it");
    ++name;
  }
}

// The running buffers are written in place, never differentiated: as torch's batch_norm,
// refuse buffers that require grad while grad mode is on (they would be written silently).
void check_buffers(const c10::optional<at::Tensor>& running_mean,
                   const c10::optional<at::Tensor>& running_var) {
  if (!at::GradMode::is_enabled()) return;
  for (const auto& [t, name] : {std::pair{&running_mean, "running_mean"},
                                std::pair{&running_var, "running_var"}})
    TORCH_CHECK(!requires_grad(*t), "The function 'bnlab::batch_norm' is not differentiable "
                "with respect to argument '", name, "'. This input cannot have requires_grad "
                "True; pass a buffer (e.g. ", name, ".detach()) or call it under "
                "torch.no_grad()");
}

// The operators that return statistics or gradients have no autograd rule of their own (the
// node of bnlab::batch_norm uses them below autograd): with an input that requires grad they
// would return outputs without a history, so the user's backward() would leave .grad None.
void check_not_differentiated(const char* op,
                              std::initializer_list<const c10::optional<at::Tensor>*> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const auto* t : tensors)
    TORCH_CHECK(!requires_grad(*t), "bnlab::", op, " is not differentiable and an input "
                "requires grad (its outputs would have no gradient); call "
                "torch.ops.bnlab.batch_norm, which is, or run it under torch.no_grad()");
}

// The keys of torch.func's wrappers (vmap, grad, jvp) and of torch.func.functionalize's: tensors
// the operator cannot serve (see `transformed`), and that the direct path below must not take.
const c10::DispatchKeySet& transform_keys() {
  static const c10::DispatchKeySet keys({c10::DispatchKey::FuncTorchBatched,
                                         c10::DispatchKey::FuncTorchGradWrapper,
                                         c10::DispatchKey::Functionalize});
  return keys;
}

// bnlab::batch_norm at the Autograd key: a node where there is something to differentiate.
at::Tensor entry_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, bool train,
                          double momentum, double eps, int64_t act, int64_t pool) {
  const c10::optional<at::Tensor> input(x);
  check_entry("batch_norm", {&input, &weight, &bias, &running_mean, &running_var},
              {"the input", "weight", "bias", "running_mean", "running_var"});
  check_buffers(running_mean, running_var);
  if (at::GradMode::is_enabled() && (x.requires_grad() || requires_grad(weight) ||
                                     requires_grad(bias)))
    return BatchNormNode::apply(x, weight, bias, running_mean, running_var, train, momentum,
                                eps, act, pool);
  // Nothing to differentiate, plain CPU tensors: the CPU kernel is where the dispatcher would
  // go next, so go there directly (a microsecond less on small layers). Tensors with a Python
  // or transform key (fake, functional, meta ...) take the dispatcher, which knows them.
  static const c10::DispatchKeySet others =
      transform_keys() |
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot});
  bool plain = x.is_cpu() && x.layout() == at::kStrided && !x.key_set().has_any(others);
  for (const auto* t : {&weight, &bias, &running_mean, &running_var})
    plain = plain && (!present(*t) || ((*t)->is_cpu() && !(*t)->key_set().has_any(others)));
  if (plain)
    return std::get<0>(forward_checked(x, weight, bias, running_mean, running_var, train,
                                       momentum, eps, act, pool, /*stats=*/false));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return std::get<0>(call_forward(x, weight, bias, running_mean, running_var, train, momentum,
                                  eps, act, pool));
}

// bnlab::batch_norm below autograd (inference mode, fake tensors): the forward's output.
at::Tensor entry_plain(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& running_mean,
                       const c10::optional<at::Tensor>& running_var, bool train,
                       double momentum, double eps, int64_t act, int64_t pool) {
  return std::get<0>(call_forward(x, weight, bias, running_mean, running_var, train, momentum,
                                  eps, act, pool));
}

// Tensors that the operator cannot serve: functorch's wrappers (vmap, grad, jvp), forward-mode
// dual tensors, and torch.func.functionalize's wrappers (which refuse an operator that writes
// its arguments). The caller gives such calls to ATen, which has their rules. (torch.compile
// and torch.export functionalize at their own level, where the operator's schema serves.)
bool transformed(const c10::optional<at::Tensor>& t) {
  if (!present(t)) return false;
  return t->key_set().has_any(transform_keys()) || t->_fw_grad(/*level=*/0).defined();
}

// The eager entry point from Python: a direct call costs about a microsecond, a torch.ops call
// several. It goes through the dispatcher all the same (so jit.trace records the operator);
// None for the transformed tensors above.
c10::optional<at::Tensor> eager_batch_norm(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool) {
  for (const auto* t : {&weight, &bias, &running_mean, &running_var})
    if (transformed(*t)) return c10::nullopt;
  if (transformed(x)) return c10::nullopt;
  static auto op = find_op("bnlab::batch_norm").typed<EntryFn>();
  return op.call(x, weight, bias, running_mean, running_var, train, momentum, eps, act, pool);
}

// bnlab::batch_norm_forward at the Autograd key: the checks above, then the kernel below.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_autograd(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool) {
  const c10::optional<at::Tensor> input(x);
  check_entry("batch_norm_forward", {&input, &weight, &bias, &running_mean, &running_var},
              {"the input", "weight", "bias", "running_mean", "running_var"});
  check_buffers(running_mean, running_var);
  check_not_differentiated("batch_norm_forward", {&input, &weight, &bias});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return call_forward(x, weight, bias, running_mean, running_var, train, momentum, eps, act,
                      pool);
}

// bnlab::batch_norm_backward at the Autograd key: the same.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool train, int64_t act, int64_t pool, bool need_input_grad) {
  const c10::optional<at::Tensor> g(grad_out), input(x), m(mean), is(invstd);
  check_entry("batch_norm_backward", {&g, &input, &weight, &bias, &m, &is},
              {"grad_out", "the input", "weight", "bias", "mean", "invstd"});
  check_not_differentiated("batch_norm_backward", {&g, &input, &weight, &bias, &m, &is});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto op = find_op("bnlab::batch_norm_backward").typed<BackwardFn>();
  return op.call(grad_out, x, weight, bias, mean, invstd, train, act, pool, need_input_grad);
}

void set_double_backward(py::object fn) { g_double_backward = new py::object(std::move(fn)); }

}  // namespace

TORCH_LIBRARY(bnlab, m) {
#define BNLAB_ARGS                                                                        \
  "(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "                 \
  "Tensor(b!)? running_var, bool training, float momentum, float eps, int act=0, "          \
  "int pool=1)"
  m.def("batch_norm" BNLAB_ARGS " -> Tensor");
  m.def("batch_norm_forward" BNLAB_ARGS " -> (Tensor, Tensor, Tensor)");
#undef BNLAB_ARGS
  m.def("batch_norm_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor invstd, bool training, int act, int pool, bool need_input_grad) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bnlab, CPU, m) {
  m.impl("batch_norm_forward", &op_forward);
  m.impl("batch_norm_backward", &op_backward);
}

TORCH_LIBRARY_IMPL(bnlab, Autograd, m) {
  m.impl("batch_norm", &entry_autograd);
  m.impl("batch_norm_forward", &forward_autograd);
  m.impl("batch_norm_backward", &backward_autograd);
}

TORCH_LIBRARY_IMPL(bnlab, CompositeExplicitAutograd, m) { m.impl("batch_norm", &entry_plain); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bnlab's fused CPU BatchNorm kernels (see bnlab/norm/kernels/)";
  m.def("batch_norm", &eager_batch_norm,
        "(x, weight?, bias?, running_mean?, running_var?, train, momentum, eps, act, pool) -> y "
        "through torch.ops.bnlab.batch_norm, or None for functorch-wrapped or dual tensors");
  m.def("set_double_backward", &set_double_backward,
        "register fn(grad_out, x, weight, bias, mean, invstd, train, eps, act, pool, "
        "(need_x, need_w, need_b)) -> (gx, gw, gb), used under create_graph");
}
