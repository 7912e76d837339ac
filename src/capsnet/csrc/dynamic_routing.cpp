// Votes and dynamic routing (Sabour, Frosst & Hinton 2017, Procedure 1) of fully connected
// capsules, for inference on the CPU: the maths of capsnet/layers.py's RoutingCaps._route
// and capsnet/routing.py's _route, without writing the votes to memory.
//
// In PyTorch the votes u_hat (B, J, I, D) are written by one product and read by five more
// (for the paper's DigitCaps, 737 KB an example). Here they are made again in each of the
// r passes, a chunk of children at a time, into a buffer that stays in L1, and used there:
// the first pass sums them (the first coupling is uniform, the softmax of zero logits); each
// later pass adds their agreement with the last parents to the logits, takes the softmax
// over the parents (the exponentials of the whole chunk at once, so that they vectorise)
// and sums the weighted votes. A thread routes its examples together, chunk by chunk, so
// that a chunk of the weight is read from memory once a pass for all of them.
// Built on first use by capsnet/native.py; tested against the PyTorch path.
//
// Shapes: N examples, I children with K components, J parents with D components; children
// u (N, I, K), weight W (I, J, D, K) (the layer's), used as Wt (I, K, J*D).

#include <torch/extension.h>

#include "exp_nonpositive.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 8;  // children a chunk: their votes for a thread's examples in L2

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

// o (JD) = sum_k u[k] w[k] for one child: u (K), w (K, JD); one 64-byte vector of o at a
// time, summed in a register (GCC's vector extension: left to itself, the compiler would
// vectorise the short sum over k instead).
template <typename T>
inline void vote(T* __restrict__ o, const T* __restrict__ u, const T* __restrict__ w, int64_t K,
                 int64_t JD) {
  typedef T Vec __attribute__((vector_size(64)));
  constexpr int64_t lanes = 64 / sizeof(T);
  int64_t x = 0;
  for (; x + lanes <= JD; x += lanes) {
    Vec acc = {}, wk;
    for (int64_t k = 0; k < K; ++k) {
      std::memcpy(&wk, w + k * JD + x, sizeof(Vec));
      acc += u[k] * wk;
    }
    std::memcpy(o + x, &acc, sizeof(Vec));
  }
  for (; x < JD; ++x) {
    T acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += u[k] * w[k * JD + x];
    o[x] = acc;
  }
}

template <typename T>
inline void axpy(T* __restrict__ o, T a, const T* __restrict__ w, int64_t n) {
  for (int64_t x = 0; x < n; ++x) o[x] += a * w[x];
}

template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T sum = 0;
  for (int64_t x = 0; x < n; ++x) sum += a[x] * b[x];
  return sum;
}

// One routing pass of one example over n children with votes (n, J, D): adds to s (J*D)
// the votes weighted by the coupling; with v (the last parents, J*D) the coupling is the
// softmax of the children's logits b (n, J) plus the agreement, and c (n, J) receives it;
// without v it is uniform and neither is touched.
template <typename T>
void pass_chunk(const T* votes, int64_t n, int64_t J, int64_t D, const T* v, T* b, T* c, T* s) {
  const int64_t JD = J * D;
  if (v == nullptr) {
    for (int64_t i = 0; i < n; ++i) axpy(s, T(1), votes + i * JD, JD);
    return;
  }
  T e[kChunk * 64];  // exponentials of the chunk (J <= 64)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < J; ++j) b[i * J + j] += dot(votes + (i * J + j) * D, v + j * D, D);
    const T top = *std::max_element(b + i * J, b + (i + 1) * J);
    for (int64_t j = 0; j < J; ++j) e[i * J + j] = b[i * J + j] - top;
  }
  for (int64_t ij = 0; ij < n * J; ++ij) e[ij] = exp_nonpositive(e[ij]);
  for (int64_t i = 0; i < n; ++i) {
    T total = 0;
    for (int64_t j = 0; j < J; ++j) total += e[i * J + j];
    for (int64_t j = 0; j < J; ++j) {
      const T cij = e[i * J + j] / total;  // c_i = softmax(b_i), eq. 3
      axpy(s + j * D, cij, votes + (i * J + j) * D, D);  // s_j += c_ij u_hat_j|i, eq. 2
      c[i * J + j] = cij;
    }
  }
}

// Procedure 1 for examples u (G, I, K) -> parents v (G, J, D) and coupling c (G, I, J).
// Each pass walks the children in chunks: the chunk's votes for all G examples (a child's
// K rows of wt stay in L1 while they are made for every example), then each example's pass
// over them.
template <typename T>
void route(const T* u, const T* wt, int64_t G, int64_t I, int64_t K, int64_t J, int64_t D,
           int64_t iterations, double eps, T* v, T* c) {
  const int64_t JD = J * D;
  std::vector<T> s(G * JD), logits(iterations > 1 ? G * I * J : 0), votes(G * kChunk * JD);
  for (int64_t t = 0; t < iterations; ++t) {
    std::fill(s.begin(), s.end(), T(0));
    for (int64_t i0 = 0; i0 < I; i0 += kChunk) {
      const int64_t n = std::min(kChunk, I - i0);
      for (int64_t i = i0; i < i0 + n; ++i)
        for (int64_t g = 0; g < G; ++g)
          vote(&votes[(g * kChunk + i - i0) * JD], u + (g * I + i) * K, wt + i * K * JD, K, JD);
      for (int64_t g = 0; g < G; ++g)
        pass_chunk(&votes[g * kChunk * JD], n, J, D, t ? v + g * JD : nullptr,
                   t ? logits.data() + (g * I + i0) * J : nullptr, c + (g * I + i0) * J,
                   s.data() + g * JD);
    }
    for (int64_t g = 0; g < G; ++g) {
      if (t == 0)
        for (int64_t x = 0; x < JD; ++x) s[g * JD + x] /= T(J);
      squash_rows(s.data() + g * JD, v + g * JD, J, D, eps);  // eq. 1
    }
  }
  if (iterations == 1) std::fill_n(c, G * I * J, T(1) / T(J));  // logits stay 0
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
  const auto uc = u.contiguous();
  const auto wt = weight.permute({0, 3, 1, 2}).contiguous();  // (I, K, J, D)
  auto v = u.new_empty({N, J, D}), c = u.new_empty({N, I, J});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dynamic_forward", [&] {
    const scalar_t *pu = uc.data_ptr<scalar_t>(), *pw = wt.data_ptr<scalar_t>();
    scalar_t *pv = v.data_ptr<scalar_t>(), *pc = c.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      route(pu + begin * I * K, pw, end - begin, I, K, J, D, iterations, eps, pv + begin * J * D,
            pc + begin * I * J);
    });
  });
  return {v, c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dynamic_forward", &dynamic_forward, "votes and dynamic routing of fully connected capsules");
}
