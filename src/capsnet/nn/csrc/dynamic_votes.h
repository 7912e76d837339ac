// Vectors of L children and their votes: shared by the forward and backward passes of the
// native dynamic routing kernel (dynamic_routing.cpp, where the layout is described).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {


constexpr int64_t kGroup = 8;  // examples whose votes of a block are made together

template <typename T>
struct Lanes {
  typedef T Vec __attribute__((vector_size(64)));
  static constexpr int64_t L = 64 / sizeof(T);
};

template <typename T>
inline typename Lanes<T>::Vec load(const T* p) {
  typename Lanes<T>::Vec x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

template <typename T>
inline void store(T* p, typename Lanes<T>::Vec x) {
  std::memcpy(p, &x, sizeof(x));
}

// v = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps) for each of J rows of D (routing.squash).
template <typename T>
void squash_rows(const T* s, T* v, int64_t J, int64_t D, double eps) {
  for (int64_t j = 0; j < J; ++j) {
    T q = 0;
    for (int64_t d = 0; d < D; ++d) q += s[j * D + d] * s[j * D + d];
    const T f = q / (T(1) + q) / std::sqrt(q + T(eps));
    for (int64_t d = 0; d < D; ++d) v[j * D + d] = s[j * D + d] * f;
  }
}

// The votes of a block's L children: o[x] = sum_k w[x, k] * u[k], w (rows, K, L), u (K, L).
// Four rows at a time, so that four independent sums overlap their multiply-adds' latency;
// with K a constant (Fixed > 0) the compiler unrolls the sum over k.
template <int64_t Fixed, typename T>
inline void block_votes(typename Lanes<T>::Vec* __restrict__ o, const T* __restrict__ w,
                        const T* __restrict__ u, int64_t rows, int64_t K) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int64_t L = Lanes<T>::L, R = 4;
  if constexpr (Fixed > 0) K = Fixed;
  int64_t x = 0;
  for (; x + R <= rows; x += R) {
    Vec acc[R] = {};
    for (int64_t k = 0; k < K; ++k) {
      const Vec uk = load(u + k * L);
      for (int64_t r = 0; r < R; ++r) acc[r] += load(w + ((x + r) * K + k) * L) * uk;
    }
    for (int64_t r = 0; r < R; ++r) o[x + r] = acc[r];
  }
  for (; x < rows; ++x) {
    Vec acc = {};
    for (int64_t k = 0; k < K; ++k) acc += load(w + (x * K + k) * L) * load(u + k * L);
    o[x] = acc;
  }
}

template <typename T>
inline void votes_of_block(typename Lanes<T>::Vec* o, const T* w, const T* u, int64_t rows,
                           int64_t K) {
  if (K == 8)  // the paper's primary capsules
    block_votes<8>(o, w, u, rows, K);
  else
    block_votes<0>(o, w, u, rows, K);
}

// The votes of a block for examples g0 .. g0 + gn into votes (gn, J*D vectors), parent by
// parent, so that parent j's weight (D*K vectors) is read from L1 for the whole group.
template <typename T>
void group_votes(typename Lanes<T>::Vec* votes, const T* wb, const T* u, int64_t g0, int64_t gn,
                 int64_t blk, int64_t nb, int64_t K, int64_t J, int64_t D) {
  constexpr int64_t L = Lanes<T>::L;
  for (int64_t j = 0; j < J; ++j)
    for (int64_t g = 0; g < gn; ++g)
      votes_of_block(&votes[g * J * D + j * D], wb + j * D * K * L, u + ((g0 + g) * nb + blk) * K * L,
                     D, K);
}

// The gradient g_s of L for s from that of v = squash(s), g_v, for each of J rows of D:
// g_s = f g_v + 2 f'(q) (s . g_v) s with q = |s|^2, n = sqrt(q + eps), f = q / ((1 + q) n),
// 2 f'(q) = (q + 2 eps - q^2) / (n^3 (1 + q)^2) (routing.squash_backward).
template <typename T>
void squash_backward_rows(const T* s, const T* gv, T* gs, int64_t J, int64_t D, double eps) {
  for (int64_t j = 0; j < J; ++j) {
    T q = 0, sg = 0;
    for (int64_t d = 0; d < D; ++d) {
      q += s[j * D + d] * s[j * D + d];
      sg += s[j * D + d] * gv[j * D + d];
    }
    const T n = std::sqrt(q + T(eps)), f = q / (T(1) + q) / n;
    const T slope = (q + T(2 * eps) - q * q) / (n * n * n * (T(1) + q) * (T(1) + q));
    for (int64_t d = 0; d < D; ++d) gs[j * D + d] = f * gv[j * D + d] + slope * sg * s[j * D + d];
  }
}

}  // namespace
