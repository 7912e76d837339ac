// Votes and dynamic routing (Sabour, Frosst & Hinton 2017, Procedure 1) of fully connected
// capsules, for inference on the CPU: the maths of capsnet/layers.py's RoutingCaps._route
// and capsnet/routing.py's _route, without writing the votes to memory.
//
// In PyTorch the votes u_hat (B, J, I, D) are written by one product and read by five more
// (for the paper's DigitCaps, 737 KB an example). Here each of the r passes makes them
// again, a block of L children at a time (L = 16 floats or 8 doubles, one 64-byte vector),
// and uses them at once. The children of a block are the lanes of every vector: a vote
// component u_hat_j|i[d] is one vector (L children), made by K multiply-adds of vectors; the
// agreement of the L children with parent j is D multiply-adds of vectors; the softmax over
// the parents runs lane-wise; and the weighted sum over the children gathers in vector
// accumulators (J*D per example), added across lanes once a pass. So no step needs a sum
// across lanes inside the loops. The first pass adds the votes unweighted (the first
// coupling is uniform, the softmax of zero logits). A thread routes its examples together,
// block by block, so that a block's weight (80 KB for the paper's DigitCaps) is read from
// memory once a pass for all of them, and makes a block's votes parent by parent for
// kGroup examples at a time, so that a parent's share of it (8 KB) is read from L1.
// Built on first use by capsnet/native.py; tested against the PyTorch path.
//
// Shapes: N examples, I children with K components, J parents with D components; children
// u (N, I, K) and weight W (I, J, D, K) (the layer's), padded with zero children to nb*L
// and taken as u (N, nb, K, L) and W (nb, J, D, K, L).

#include <torch/extension.h>

#include "exp_nonpositive.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// One later pass of one example over a block of children with votes (J*D vectors): adds
// their agreement with the parents v (J*D) to the logits b (J vectors), takes the softmax
// over j lane by lane (eq. 3) and adds the weighted votes to acc (J*D vectors; eq. 2). With
// c, writes the coupling of the block's first `live` children there, (live, J).
template <typename T>
void block_pass(const typename Lanes<T>::Vec* votes, const T* v, int64_t J, int64_t D,
                typename Lanes<T>::Vec* b, typename Lanes<T>::Vec* acc, T* c, int64_t live) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int64_t L = Lanes<T>::L;
  for (int64_t j = 0; j < J; ++j)
    for (int64_t d = 0; d < D; ++d) b[j] += votes[j * D + d] * v[j * D + d];  // agreement
  Vec top = b[0];
  for (int64_t j = 1; j < J; ++j) top = b[j] > top ? b[j] : top;
  alignas(64) T e[64 * L];  // exponentials, (J, L) with J <= 64
  for (int64_t j = 0; j < J; ++j) {
    const Vec shifted = b[j] - top;
    std::memcpy(e + j * L, &shifted, sizeof(Vec));
  }
  for (int64_t x = 0; x < J * L; ++x) e[x] = exp_nonpositive(e[x]);
  Vec total = {};
  for (int64_t j = 0; j < J; ++j) total += load(e + j * L);
  const Vec inverse = T(1) / total;
  for (int64_t j = 0; j < J; ++j) {
    const Vec cj = load(e + j * L) * inverse;  // c_ij for the block's children
    for (int64_t d = 0; d < D; ++d) acc[j * D + d] += cj * votes[j * D + d];
    if (c != nullptr)
      for (int64_t l = 0; l < live; ++l) c[l * J + j] = cj[l];
  }
}

// Procedure 1 for examples u (G, nb, K, L) -> parents v (G, J, D) and the last coupling
// c (G, I, J). Each pass walks the blocks of children; each block serves all G examples.
template <typename T>
void route(const T* u, const T* w, int64_t G, int64_t nb, int64_t I, int64_t K, int64_t J,
           int64_t D, int64_t iterations, double eps, T* v, T* c) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int64_t L = Lanes<T>::L;
  const int64_t JD = J * D;
  std::vector<Vec> acc(G * JD), logits(iterations > 1 ? G * nb * J : 0), votes(kGroup * JD);
  std::vector<T> s(JD);
  for (int64_t t = 0; t < iterations; ++t) {
    std::fill(acc.begin(), acc.end(), Vec{});
    for (int64_t blk = 0; blk < nb; ++blk) {
      const T* wb = w + blk * JD * K * L;
      const int64_t live = std::min(L, I - blk * L);
      for (int64_t g0 = 0; g0 < G; g0 += kGroup) {
        const int64_t gn = std::min(kGroup, G - g0);
        for (int64_t j = 0; j < J; ++j)  // parent j's weight (D*K vectors) in L1 for the group
          for (int64_t g = 0; g < gn; ++g)
            votes_of_block(&votes[g * JD + j * D], wb + j * D * K * L,
                           u + ((g0 + g) * nb + blk) * K * L, D, K);
        for (int64_t g = g0; g < g0 + gn; ++g) {
          const Vec* vg = &votes[(g - g0) * JD];
          Vec* a = &acc[g * JD];
          if (t == 0) {  // uniform coupling: the sum of the votes, divided by J below
            for (int64_t x = 0; x < JD; ++x) a[x] += vg[x];
            continue;
          }
          T* cb = t + 1 == iterations ? c + (g * I + blk * L) * J : nullptr;
          block_pass(vg, v + g * JD, J, D, &logits[(g * nb + blk) * J], a, cb, live);
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t x = 0; x < JD; ++x) {
        T sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += acc[g * JD + x][l];
        s[x] = t == 0 ? sum / T(J) : sum;
      }
      squash_rows(s.data(), v + g * JD, J, D, eps);  // eq. 1
    }
  }
  if (iterations == 1) std::fill_n(c, G * I * J, T(1) / T(J));  // the logits stay 0
}

}  // namespace

// -> parents v (N, J, D) and the last iteration's coupling c (N, I, J).
std::vector<torch::Tensor> dynamic_forward(torch::Tensor u, torch::Tensor weight, int64_t iterations,
                                           double eps) {
  TORCH_CHECK(iterations >= 1, "routing needs at least 1 iteration");
  TORCH_CHECK(u.dim() == 3 && weight.dim() == 4, "u must be (N, I, K) and weight (I, J, D, K)");
  TORCH_CHECK(weight.size(0) == u.size(1) && weight.size(3) == u.size(2),
              "weight must be (I, J, D, K) for u (N, I, K)");
  TORCH_CHECK(weight.size(1) <= 64, "at most 64 parents");
  TORCH_CHECK(u.device().is_cpu() && weight.device().is_cpu() && u.scalar_type() == weight.scalar_type(),
              "u and weight must be CPU tensors of one dtype");
  const int64_t N = u.size(0), I = u.size(1), K = u.size(2), J = weight.size(1), D = weight.size(2);
  const int64_t L = 64 / u.element_size(), nb = (I + L - 1) / L, pad = nb * L - I;
  const auto up = pad ? at::constant_pad_nd(u, {0, 0, 0, pad}) : u;  // (N, nb*L, K): zero children
  const auto wp = pad ? at::constant_pad_nd(weight, {0, 0, 0, 0, 0, 0, 0, pad}) : weight;
  const auto ul = up.reshape({N, nb, L, K}).permute({0, 1, 3, 2}).contiguous();  // (N, nb, K, L)
  const auto wl = wp.reshape({nb, L, J, D, K}).permute({0, 2, 3, 4, 1}).contiguous();  // (nb, J, D, K, L)
  auto v = u.new_empty({N, J, D}), c = u.new_empty({N, I, J});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dynamic_forward", [&] {
    const scalar_t *pu = ul.data_ptr<scalar_t>(), *pw = wl.data_ptr<scalar_t>();
    scalar_t *pv = v.data_ptr<scalar_t>(), *pc = c.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      route(pu + begin * nb * K * L, pw, end - begin, nb, I, K, J, D, iterations, eps,
            pv + begin * J * D, pc + begin * I * J);
    });
  });
  return {v, c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dynamic_forward", &dynamic_forward, "votes and dynamic routing of fully connected capsules");
}
