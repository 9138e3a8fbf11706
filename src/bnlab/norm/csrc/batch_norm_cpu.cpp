// bnlab's fast CPU BatchNorm: fused kernels for float32 and float64, exposed as a Python
// extension module. The math is the one in bnlab/norm/functional.py's docstring; this file
// only makes it fast. bnlab/norm/fast.py builds it, loads it and decides when to use it.
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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
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

inline void merge(double& count, double& mean, double& m2, double nb, double mean_b,
                  double m2_b) {
  const double total = count + nb;
  const double delta = mean_b - mean;
  mean = merged_mean(mean, mean_b, count / total, nb / total);
  m2 += m2_b + delta * delta * count * nb / total;
  count = total;
}

// ---- activation: the logistic sigmoid, vectorizable ----------------------------------------
// float: exp from Cody-Waite range reduction and a degree-6 polynomial (about 1 ulp), written
// with plain arithmetic so `omp simd` loops vectorize it; double: the C library's exp.
inline float exp_float(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}
inline float sigmoid(float z) { return 1.0f / (1.0f + exp_float(-z)); }
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

enum Act : int64_t { kIdentity = 0, kSigmoid = 1 };

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

// ---- statistics: per-channel mean and m2 = sum (x - mean)^2 ------------------------------

template <typename T>
void stats_planes(const T* x, const Layout& L, double* mean, double* m2) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, L.n * L.s));
  at::parallel_for(0, L.c, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double count = 0, mu = 0, acc = 0;
      for (int64_t n = 0; n < L.n; ++n) {
        const T* p = x + (n * L.c + c) * L.s;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < L.s; ++i) sum += p[i];
        const double pm = sum / L.s;
        double sq = 0;
#pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < L.s; ++i) {
          const double d = p[i] - pm;
          sq += d * d;
        }
        merge(count, mu, acc, static_cast<double>(L.s), pm, sq);
      }
      mean[c] = mu;
      m2[c] = acc;
    }
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
    for (int64_t r = b0; r < b1; ++r) {
      const T* p = x + r * W;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) bm[j] += p[j] - K[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) bm[j] /= nb;
    for (int64_t r = b0; r < b1; ++r) {
      const T* p = x + r * W;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        const T d = (p[j] - K[j]) - bm[j];
        bq[j] += d * d;
      }
    }
    // merge() per column, its per-block factors hoisted out of the column loop.
    double* cm = mu.data() + k * W;
    double* ca = acc.data() + k * W;
    const double count = cnt[k], total = count + nb;
    const double f = count / total, f_b = nb / total, f_m2 = count * nb / total;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      const double delta = bm[j] - cm[j];
      cm[j] = merged_mean(cm[j], bm[j], f, f_b);
      ca[j] += bq[j] + delta * delta * f_m2;
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
        ca[c] += ka[t * C + c] + cnt[k] * d * d;
      }
    for (int64_t c = 0; c < C; ++c) merge(count[c], m[c], a[c], cnt[k] * L.k, cm[c], ca[c]);
  }
  for (int64_t c = 0; c < C; ++c) m[c] += K[c];  // mean - K -> mean, in double
  merge_rows(x + wide_rows(L) * W, tail_rows(L), C, count.data(), m.data(), a.data());
  std::copy(m.begin(), m.end(), mean);
  std::copy(a.begin(), a.end(), m2);
}

// ---- elementwise passes ------------------------------------------------------------------
// A segment is a contiguous run of values: a plane (S values of one channel) or a wide row (k
// rows; the last one is short when there are tail rows), whose per-channel values are passed
// laid out per column (see per_column). for_segments calls seg(i) for every segment, in
// parallel chunks that hold at least kGrain values.
inline int64_t segment_length(const Layout& L) { return L.rows ? L.w : L.s; }
inline int64_t segment_count(const Layout& L) {
  return L.rows ? wide_rows(L) + (tail_rows(L) > 0) : L.n * L.c;
}
// Values in segment i: segment_length, except a short last wide row.
inline int64_t segment_size(const Layout& L, int64_t i) {
  return L.rows ? std::min(L.w, (L.n * L.s - i * L.k) * L.c) : L.s;
}

template <typename F>
void for_segments(const Layout& L, const F& seg) {
  at::parallel_for(0, segment_count(L), std::max<int64_t>(1, kGrain / segment_length(L)),
                   [&](int64_t i0, int64_t i1) {
                     for (int64_t i = i0; i < i1; ++i) seg(i);
                   });
}

template <bool kSig, typename T>
inline T activate(T z) {
  if constexpr (kSig) return sigmoid(z);
  return z;
}

// y = act((x - mean) * scale + shift), per channel.
template <bool kSig, typename T>
void normalize(const T* x, T* y, const Layout& L, const T* mean, const T* scale,
               const T* shift) {
  const int64_t len = segment_length(L);
  for_segments(L, [&](int64_t i) {
    const T* p = x + i * len;
    T* q = y + i * len;
    if (L.rows) {
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c)
        q[c] = activate<kSig>((p[c] - mean[c]) * scale[c] + shift[c]);
    } else {
      const int64_t c = i % L.c;
      const T m = mean[c], k = scale[c], b = shift[c];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) q[j] = activate<kSig>((p[j] - m) * k + b);
    }
  });
}

// y = avg_pool_2x2(sigmoid((x - mean) * scale + shift)), planes layout, H and W even.
template <typename T>
void normalize_sigmoid_pool(const T* x, T* y, const Layout& L, int64_t W, const T* mean,
                            const T* scale, const T* shift) {
  const int64_t S = L.s, Wo = W / 2;
  for_segments(L, [&](int64_t i) {
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
  });
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

// Without an activation dz is grad_out itself: nothing to prepare.
struct NoPrepare {
  void operator()(int64_t) const {}
};

// ---- backward sums: sum_g = sum dz, sum_gd = sum dz * (x - mean) --------------------------
// prepare(i) fills segment i of dz just before it is summed (so a computed dz is summed while
// it is still in L1, in the same pass).

template <typename T, typename P>
void grad_sums(const T* dz, const T* x, const Layout& L, const T* mean, double* sum_g,
               double* sum_gd, const P& prepare) {
  if (!L.rows) {
    const int64_t S = L.s;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, L.n * S));
    at::parallel_for(0, L.c, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const double m = mean[c];
        double sg = 0, sgd = 0;
        for (int64_t n = 0; n < L.n; ++n) {
          prepare(n * L.c + c);
          const int64_t off = (n * L.c + c) * S;
          const T* g = dz + off;
          const T* p = x + off;
          double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
          for (int64_t j = 0; j < S; ++j) {
            a += g[j];
            b += static_cast<double>(g[j]) * (p[j] - m);
          }
          sg += a;
          sgd += b;
        }
        sum_g[c] = sg;
        sum_gd[c] = sgd;
      }
    });
    return;
  }
  const int64_t C = L.c, W = L.w;
  const int64_t nchunks = chunks_for(wide_rows(L), W);
  std::vector<double> a(nchunks * W, 0.0), b(nchunks * W, 0.0);
  // Sums of kSubRows wide rows in T (full SIMD width), each added into double accumulators.
  for_row_blocks(L, nchunks, kSubRows, [&](int64_t k, int64_t b0, int64_t b1) {
    const auto [fa, fb] = zeroed_rows<T>(W);  // block sums of dz and dz * (x - mean)
    for (int64_t r = b0; r < b1; ++r) {
      prepare(r);
      const T* g = dz + r * W;
      const T* p = x + r * W;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        fa[j] += g[j];
        fb[j] += g[j] * (p[j] - mean[j]);
      }
    }
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

// ---- dx = (dz - mean_g - (x - mean) * proj) * scale (proj = 0, mean_g = 0 in eval) --------

template <typename T>
void input_grad(const T* dz, const T* x, T* dx, const Layout& L, const T* mean,
                const T* mean_g, const T* proj, const T* scale) {
  const int64_t len = segment_length(L);
  for_segments(L, [&](int64_t i) {
    const T* g = dz + i * len;
    const T* p = x + i * len;
    T* q = dx + i * len;
    if (L.rows) {
      const int64_t n = segment_size(L, i);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c)
        q[c] = (g[c] - mean_g[c] - (p[c] - mean[c]) * proj[c]) * scale[c];
    } else {
      const int64_t c = i % L.c;
      const T m = mean[c], mg = mean_g[c], pr = proj[c], k = scale[c];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) q[j] = (g[j] - mg - (p[j] - m) * pr) * k;
    }
  });
}

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

template <typename T>
void epilogue_forward(const T* x, T* y, const Layout& L, const at::Tensor& xt, int64_t act,
                      int64_t pool, const T* mean_c, const T* scale_c, const T* shift_c) {
  const auto mean = per_column(L, mean_c), scale = per_column(L, scale_c),
             shift = per_column(L, shift_c);
  const T *m = mean.data(), *k = scale.data(), *b = shift.data();
  if (pool == 2) normalize_sigmoid_pool(x, y, L, xt.size(3), m, k, b);
  else if (act == kSigmoid) normalize<true>(x, y, L, m, k, b);
  else normalize<false>(x, y, L, m, k, b);
}

// Training forward: batch statistics, y, and (last) the running-statistics update.
// Returns (y, mean, invstd), mean and invstd as (C,) tensors of x's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, double momentum, double eps, int64_t act,
    int64_t pool) {
  const Layout L = layout_of(x);
  const int64_t C = L.c;
  const double count = static_cast<double>(L.n * L.s);
  std::vector<double> mean(C), m2(C);
  at::Tensor y = output_for(x, pool);
  at::Tensor mean_t = at::empty({C}, x.options());
  at::Tensor invstd_t = at::empty({C}, x.options());
  const at::Tensor w = channel_vector(weight, x, 1.0);
  const at::Tensor b = channel_vector(bias, x, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_train", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (L.rows) stats_rows(xp, L, mean.data(), m2.data());
    else stats_planes(xp, L, mean.data(), m2.data());
    scalar_t* mp = mean_t.mutable_data_ptr<scalar_t>();
    scalar_t* ip = invstd_t.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> scale(C);
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      mp[c] = static_cast<scalar_t>(mean[c]);
      ip[c] = static_cast<scalar_t>(1.0 / std::sqrt(m2[c] / count + eps));
      scale[c] = ip[c] * wp[c];
    }
    epilogue_forward(xp, y.mutable_data_ptr<scalar_t>(), L, x, act, pool, mp, scale.data(),
                     b.const_data_ptr<scalar_t>());
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
  at::Tensor y = output_for(x, pool);
  at::Tensor invstd_t = at::empty({C}, x.options());
  const at::Tensor w = channel_vector(weight, x, 1.0);
  const at::Tensor b = channel_vector(bias, x, 0.0);
  const at::Tensor m = mean.contiguous();
  const at::Tensor v = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_eval", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    scalar_t* ip = invstd_t.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> scale(C);
    for (int64_t c = 0; c < C; ++c) {
      ip[c] = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(vp[c]) + eps));
      scale[c] = ip[c] * wp[c];
    }
    epilogue_forward(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), L, x, act,
                     pool, m.const_data_ptr<scalar_t>(), scale.data(),
                     b.const_data_ptr<scalar_t>());
  });
  return {y, invstd_t};
}

// Backward. Returns (dx or an empty tensor, sum dz = dL/dbeta, sum dz * x_hat = dL/dgamma),
// where dz is the gradient at the normalization's output (grad_out itself without epilogue).
// train: the statistics were the batch's own (full closed form); else constants.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    bool train, bool need_input_grad, int64_t act, int64_t pool) {
  const Layout L = layout_of(x);
  const int64_t C = L.c;
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_backward", [&] {
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* ip = is.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    std::vector<scalar_t> scale(C);
    for (int64_t c = 0; c < C; ++c) scale[c] = ip[c] * wp[c];
    const auto mean_col = per_column(L, mp), scale_col = per_column(L, scale.data());
    const scalar_t* dzp = dz.const_data_ptr<scalar_t>();
    std::vector<double> sg(C), sgd(C);
    if (act == kSigmoid) {  // dz computed segment by segment inside the reduction pass
      const at::Tensor g = pool == 1 ? like(grad_out, x) : grad_out.contiguous();
      const auto shift_col = per_column(L, b.const_data_ptr<scalar_t>());
      const SigmoidGrad<scalar_t> fill{g.const_data_ptr<scalar_t>(), xp,
                                       dz.mutable_data_ptr<scalar_t>(), L,
                                       x.dim() == 4 ? x.size(3) : 1, pool, mean_col.data(),
                                       scale_col.data(), shift_col.data()};
      grad_sums(dzp, xp, L, mean_col.data(), sg.data(), sgd.data(), fill);
    } else {
      grad_sums(dzp, xp, L, mean_col.data(), sg.data(), sgd.data(), NoPrepare{});
    }
    scalar_t* sgp = sum_g_t.mutable_data_ptr<scalar_t>();
    scalar_t* sxp = sum_gx_t.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> mean_g(C, 0), proj(C, 0);
    for (int64_t c = 0; c < C; ++c) {
      const double inv = ip[c];
      sgp[c] = static_cast<scalar_t>(sg[c]);
      sxp[c] = static_cast<scalar_t>(sgd[c] * inv);  // sum dz * x_hat
      if (train) {
        mean_g[c] = static_cast<scalar_t>(sg[c] / count);
        proj[c] = static_cast<scalar_t>(sgd[c] * inv * inv / count);
      }
    }
    if (need_input_grad)  // (dx may be dz's buffer: each element is read, then written)
      input_grad(dzp, xp, dx.mutable_data_ptr<scalar_t>(), L, mean_col.data(),
                 per_column(L, mean_g.data()).data(), per_column(L, proj.data()).data(),
                 scale_col.data());
  });
  return {dx, sum_g_t, sum_gx_t};
}

// ---- autograd ----------------------------------------------------------------------------
// The autograd node is C++ because a Python autograd.Function costs about 20 us per forward and
// backward, as long as the kernels themselves on LeNet's small layers. Its backward is the
// kernel above. Under create_graph (double backward) it calls instead the differentiable
// reference that bnlab/norm/fast.py registers with set_double_backward.

py::object* g_double_backward = nullptr;  // never freed: it must outlive the interpreter

at::Tensor or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}
c10::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// (y, mean, invstd) with batch statistics (running buffers updated last) or running ones.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_any(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool train, double momentum, double eps,
    int64_t act, int64_t pool) {
  if (train) return forward_train(x, weight, bias, running_mean, running_var, momentum, eps,
                                  act, pool);
  TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
              "bnlab fast batch_norm: evaluation needs running_mean and running_var");
  auto [y, invstd] = forward_eval(x, weight, bias, *running_mean, *running_var, eps, act, pool);
  return {y, *running_mean, invstd};
}

struct BatchNormNode : public torch::autograd::Function<BatchNormNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& running_mean,
                            const c10::optional<at::Tensor>& running_var, bool train,
                            double momentum, double eps, int64_t act, int64_t pool) {
    auto [y, mean, invstd] = forward_any(x, weight, bias, running_mean, running_var, train,
                                         momentum, eps, act, pool);
    ctx->save_for_backward({x, or_undefined(weight), or_undefined(bias), mean, invstd,
                            train ? at::Tensor() : or_undefined(running_var)});
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
                  "bnlab fast batch_norm: no double-backward function registered");
      py::gil_scoped_acquire gil;
      auto r = (*g_double_backward)(grads[0], x, or_none(w), or_none(b), saved[3], saved[4],
                                    or_none(saved[5]), train, ctx->saved_data["eps"].toDouble(),
                                    act, pool, std::make_tuple(need_x, need_w, need_b))
                   .cast<std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                                    c10::optional<at::Tensor>>>();
      gx = or_undefined(std::get<0>(r));
      gw = or_undefined(std::get<1>(r));
      gb = or_undefined(std::get<2>(r));
    } else {
      auto [dx, sum_g, sum_gx] = kernel_backward(grads[0], x, or_none(w), or_none(b), saved[3],
                                                 saved[4], train, need_x, act, pool);
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
  return t.has_value() && t->defined() && t->requires_grad();
}

// Whether the kernels take this call (the same rule as bnlab/norm/fast.py's kernels_for):
// a non-empty float32/float64 CPU input, contiguous or channels_last(_3d); per-channel tensors
// of its dtype, on the CPU, contiguous; pooling only of a contiguous 4-D input, H and W even.
bool applies(const at::Tensor& x, std::initializer_list<const c10::optional<at::Tensor>*> others,
             int64_t pool) {
  const auto dtype = x.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kDouble) || !x.device().is_cpu() || x.dim() < 2 ||
      x.numel() == 0)
    return false;
  const bool contiguous = x.is_contiguous();
  if (!contiguous && !(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
      !(x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)))
    return false;
  if (pool != 1 && !(pool == 2 && contiguous && x.dim() == 4 && x.size(2) % 2 == 0 &&
                     x.size(3) % 2 == 0))
    return false;
  for (const auto* t : others)
    if (t->has_value() && (*t)->defined() &&
        ((*t)->scalar_type() != dtype || !(*t)->device().is_cpu() || !(*t)->is_contiguous()))
      return false;
  return true;
}

// The entry point: y, with a BatchNormNode as its grad_fn when there is something to
// differentiate (grad mode on and x, weight or bias requiring grad); None where the kernels do
// not apply (see applies), for the caller to take the reference path.
c10::optional<at::Tensor> batch_norm(const at::Tensor& x,
                                     const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     const c10::optional<at::Tensor>& running_mean,
                                     const c10::optional<at::Tensor>& running_var, bool train,
                                     double momentum, double eps, int64_t act, int64_t pool) {
  // What follows the normalization: act = 0 (none) or 1 (sigmoid); pool = 1 (none) or 2 (2x2
  // average pooling with stride 2, after a sigmoid; applies() checks the input's shape for it).
  TORCH_CHECK(act == kIdentity || act == kSigmoid, "bnlab fast batch_norm: act must be 0 or 1");
  TORCH_CHECK(pool == 1 || (pool == 2 && act == kSigmoid),
              "bnlab fast batch_norm: pool must be 1, or 2 after a sigmoid");
  if (!applies(x, {&weight, &bias, &running_mean, &running_var}, pool)) return c10::nullopt;
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || requires_grad(weight) || requires_grad(bias)))
    return BatchNormNode::apply(x, weight, bias, running_mean, running_var, train, momentum,
                                eps, act, pool);
  return std::get<0>(forward_any(x, weight, bias, running_mean, running_var, train, momentum,
                                 eps, act, pool));
}

void set_double_backward(py::object fn) { g_double_backward = new py::object(std::move(fn)); }

}  // namespace

// A Python module (pybind11): a direct call costs about a microsecond, where a torch.ops
// dispatch costs several, which matters for the small layers of LeNet.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bnlab's fused CPU BatchNorm kernels (see bnlab/norm/fast.py)";
  m.def("batch_norm", &batch_norm,
        "(x, weight?, bias?, running_mean?, running_var?, train, momentum, eps, act, pool) -> y,"
        " or None where the kernels do not apply; differentiable (a C++ autograd node); in "
        "training the running buffers are updated in place, last");
  m.def("set_double_backward", &set_double_backward,
        "register fn(grad_out, x, weight, bias, mean, invstd, running_var, train, eps, act, "
        "pool, (need_x, need_w, need_b)) -> (gx, gw, gb), used under create_graph");
}
