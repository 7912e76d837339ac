// Votes and dynamic routing (Sabour, Frosst & Hinton 2017, Procedure 1) of fully connected
// capsules on the CPU, and its backward pass: the maths of capsnet/nn/layers.py's
// RoutingCaps._route and capsnet/nn/dynamic.py's _route and _DynamicRouting, without writing
// the votes or their gradient to memory.
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
// For training, the forward pass also keeps each pass's s and coupling (about 1/8 of the
// votes for 3 iterations), and the backward pass (route_backward) makes the votes again in
// the same layout: r - 1 walks for the adjoints of the softmax and the agreements, one for
// the gradients of u and W, each thread adding to a copy of W's gradient of its own.
// Built on first use by capsnet/native.py; tested against the PyTorch path.
//
// Shapes: N examples, I children with K components, J parents with D components; children
// u (N, I, K) and weight W (I, J, D, K) (the layer's), padded with zero children to nb*L
// and taken as u (N, nb, K, L) and W (nb, J, D, K, L).

#include <torch/extension.h>

#include "dynamic_votes.h"
#include "exp_nonpositive.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// One later pass of one example over a block of children with votes (J*D vectors): adds
// their agreement with the parents v (J*D) to the logits b (J vectors), takes the softmax
// over j lane by lane (eq. 3) and adds the weighted votes to acc (J*D vectors; eq. 2). With
// c, writes the coupling of the block's first `live` children there, (live, J); with keep,
// the coupling of all L as J vectors.
template <typename T>
void block_pass(const typename Lanes<T>::Vec* votes, const T* v, int64_t J, int64_t D,
                typename Lanes<T>::Vec* b, typename Lanes<T>::Vec* acc, T* c, int64_t live,
                typename Lanes<T>::Vec* keep) {
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
    if (keep != nullptr) keep[j] = cj;
    if (c != nullptr)
      for (int64_t l = 0; l < live; ++l) c[l * J + j] = cj[l];
  }
}

// Procedure 1 for examples u (G, nb, K, L) -> parents v (G, J, D) and, with c, the last
// coupling c (G, I, J). Each pass walks the blocks of children; each block serves all G
// examples. For training, with s_keep and c_keep: every pass's s (G, T, J*D) and every
// later pass's coupling (G, T - 1, nb, J vectors).
template <typename T>
void route(const T* u, const T* w, int64_t G, int64_t nb, int64_t I, int64_t K, int64_t J,
           int64_t D, int64_t iterations, double eps, T* v, T* c, T* s_keep,
           typename Lanes<T>::Vec* c_keep) {
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
        group_votes(votes.data(), wb, u, g0, gn, blk, nb, K, J, D);
        for (int64_t g = g0; g < g0 + gn; ++g) {
          const Vec* vg = &votes[(g - g0) * JD];
          Vec* a = &acc[g * JD];
          if (t == 0) {  // uniform coupling: the sum of the votes, divided by J below
            for (int64_t x = 0; x < JD; ++x) a[x] += vg[x];
            continue;
          }
          T* cb = t + 1 == iterations && c ? c + (g * I + blk * L) * J : nullptr;
          Vec* kb = c_keep ? c_keep + ((g * (iterations - 1) + t - 1) * nb + blk) * J : nullptr;
          block_pass(vg, v + g * JD, J, D, &logits[(g * nb + blk) * J], a, cb, live, kb);
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t x = 0; x < JD; ++x) {
        T sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += acc[g * JD + x][l];
        s[x] = t == 0 ? sum / T(J) : sum;
      }
      if (s_keep) std::copy(s.begin(), s.end(), s_keep + (g * iterations + t) * JD);
      squash_rows(s.data(), v + g * JD, J, D, eps);  // eq. 1
    }
  }
  if (iterations == 1 && c) std::fill_n(c, G * I * J, T(1) / T(J));  // the logits stay 0
}

// The adjoint of route for examples u (G, nb, K, L), from the kept s (G, T, J*D) and
// coupling (G, T - 1, nb, J vectors) and the gradients of v (G, J*D) and of the last
// coupling (G, nb, J vectors; or null): writes that of u to grad_u (G, nb, K, L) and adds
// that of w to grad_w (nb, J, D, K, L). Passes t = T-1 .. 1 each walk the blocks making the
// votes again: the coupling's adjoint g_c = û.g_s_t (+ the last coupling's gradient), the
// softmax's g_b_t = c_t (g_c - sum_j c_t g_c), and the agreements' share of g_v_{t-1},
// sum_i (sum_{t' >= t} g_b_t') û. A last walk makes the votes' gradient block by block,
//   dû_j|i = c_0 g_s_0 + sum_{t >= 1} (c_t g_s_t + g_b_t V_t),  V_t = sum_{t' < t} v_t'
// (c_0 = 1/J; b_t = sum_{t' < t} û.v_t'), and from it those of u and w; dû is never stored.
template <typename T>
void route_backward(const T* u, const T* w, int64_t G, int64_t nb, int64_t K, int64_t J,
                    int64_t D, int64_t iterations, double eps, const T* s_keep,
                    const typename Lanes<T>::Vec* c_keep, const T* grad_v,
                    const typename Lanes<T>::Vec* grad_c, T* grad_u, T* grad_w) {
  using Vec = typename Lanes<T>::Vec;
  constexpr int64_t L = Lanes<T>::L;
  const int64_t JD = J * D, KL = K * L, last = iterations - 1, TJD = iterations * JD;
  std::vector<T> gs(G * TJD), vsum(G * TJD), vt(JD), gv(JD);  // g_s_t and V_t, (G, T, J*D)
  std::vector<Vec> gb(G * last * nb * J), gb_total(G * nb * J), acc(G * JD), votes(kGroup * JD);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t t = 1; t <= last; ++t) {
      squash_rows(s_keep + g * TJD + (t - 1) * JD, vt.data(), J, D, eps);
      for (int64_t x = 0; x < JD; ++x) vsum[g * TJD + t * JD + x] = vsum[g * TJD + (t - 1) * JD + x] + vt[x];
    }
    squash_backward_rows(s_keep + g * TJD + last * JD, grad_v + g * JD, &gs[g * TJD + last * JD], J, D, eps);
  }
  for (int64_t t = last; t >= 1; --t) {
    std::fill(acc.begin(), acc.end(), Vec{});
    for (int64_t blk = 0; blk < nb; ++blk) {
      for (int64_t g0 = 0; g0 < G; g0 += kGroup) {
        const int64_t gn = std::min(kGroup, G - g0);
        group_votes(votes.data(), w + blk * JD * KL, u, g0, gn, blk, nb, K, J, D);
        for (int64_t g = g0; g < g0 + gn; ++g) {
          const Vec* vg = &votes[(g - g0) * JD];
          const Vec* ct = c_keep + ((g * last + t - 1) * nb + blk) * J;
          const T* gst = &gs[g * TJD + t * JD];
          Vec* gbt = &gb[((g * last + t - 1) * nb + blk) * J];
          Vec* total = &gb_total[(g * nb + blk) * J];
          Vec gc[64], dot = {};
          for (int64_t j = 0; j < J; ++j) {
            Vec x = t == last && grad_c ? grad_c[(g * nb + blk) * J + j] : Vec{};
            for (int64_t d = 0; d < D; ++d) x += vg[j * D + d] * gst[j * D + d];
            gc[j] = x;
            dot += ct[j] * x;
          }
          for (int64_t j = 0; j < J; ++j) {
            gbt[j] = ct[j] * (gc[j] - dot);
            total[j] += gbt[j];
            for (int64_t d = 0; d < D; ++d) acc[g * JD + j * D + d] += total[j] * vg[j * D + d];
          }
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t x = 0; x < JD; ++x) {
        T sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += acc[g * JD + x][l];
        gv[x] = sum;
      }
      squash_backward_rows(s_keep + g * TJD + (t - 1) * JD, gv.data(), &gs[g * TJD + (t - 1) * JD], J, D, eps);
    }
  }
  std::vector<Vec>& du = votes;  // the votes' gradient, (kGroup, J*D vectors)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const T* wb = w + blk * JD * KL;
    T* dwb = grad_w + blk * JD * KL;
    for (int64_t g0 = 0; g0 < G; g0 += kGroup) {
      const int64_t gn = std::min(kGroup, G - g0);
      for (int64_t g = g0; g < g0 + gn; ++g) {
        const T* gsg = &gs[g * TJD];
        for (int64_t j = 0; j < J; ++j)
          for (int64_t x = j * D; x < (j + 1) * D; ++x) {
            Vec a = Vec{} + gsg[x] / T(J);
            for (int64_t t = 1; t <= last; ++t) {
              const int64_t at = ((g * last + t - 1) * nb + blk) * J + j;
              a += c_keep[at] * gsg[t * JD + x] + gb[at] * vsum[g * TJD + t * JD + x];
            }
            du[(g - g0) * JD + x] = a;
          }
      }
      const T* ub = u + (g0 * nb + blk) * KL;  // example g's children at ub + g * nb * KL
      for (int64_t x = 0; x < JD; ++x)
        for (int64_t k = 0; k < K; ++k) {
          Vec a = load(dwb + (x * K + k) * L);
          for (int64_t g = 0; g < gn; ++g) a += du[g * JD + x] * load(ub + g * nb * KL + k * L);
          store(dwb + (x * K + k) * L, a);
        }
      for (int64_t g = 0; g < gn; ++g) {
        Vec a[64] = {};
        for (int64_t x = 0; x < JD; ++x)
          for (int64_t k = 0; k < K; ++k) a[k] += load(wb + (x * K + k) * L) * du[g * JD + x];
        for (int64_t k = 0; k < K; ++k) store(grad_u + ((g0 + g) * nb + blk) * KL + k * L, a[k]);
      }
    }
  }
}

}  // namespace

namespace {

void check(const torch::Tensor& u, const torch::Tensor& weight, int64_t iterations) {
  TORCH_CHECK(iterations >= 1, "routing needs at least 1 iteration");
  TORCH_CHECK(u.dim() == 3 && weight.dim() == 4, "u must be (N, I, K) and weight (I, J, D, K)");
  TORCH_CHECK(weight.size(0) == u.size(1) && weight.size(3) == u.size(2),
              "weight must be (I, J, D, K) for u (N, I, K)");
  TORCH_CHECK(weight.size(1) <= 64 && u.size(2) <= 64, "at most 64 parents and 64 components");
  TORCH_CHECK(u.device().is_cpu() && weight.device().is_cpu() && u.scalar_type() == weight.scalar_type(),
              "u and weight must be CPU tensors of one dtype");
}

// A tensor (N, I, ...) padded with zero children to nb*L and laid out (N, nb, ..., L).
torch::Tensor lanes(const torch::Tensor& x, int64_t L) {
  const int64_t I = x.size(1), nb = (I + L - 1) / L, pad = nb * L - I;
  std::vector<int64_t> padding(2 * (x.dim() - 2), 0), shape{x.size(0), nb, L}, order{0, 1};
  padding.insert(padding.end(), {0, pad});
  const auto xp = pad ? at::constant_pad_nd(x, padding) : x;
  for (int64_t a = 2; a < x.dim(); ++a) {
    shape.push_back(x.size(a));
    order.push_back(a + 1);
  }
  order.push_back(2);
  return xp.reshape(shape).permute(order).contiguous();
}

// The inverse of lanes for I children.
torch::Tensor unlanes(const torch::Tensor& x, int64_t I) {
  std::vector<int64_t> order{0, 1, x.dim() - 1}, shape{x.size(0), x.size(1) * x.size(-1)};
  for (int64_t a = 2; a < x.dim() - 1; ++a) {
    order.push_back(a);
    shape.push_back(x.size(a));
  }
  return x.permute(order).reshape(shape).narrow(1, 0, I);
}

// -> parents v (N, J, D), the last iteration's coupling c (N, I, J) and, with keep, every
// pass's s (N, T, J, D) and every later pass's coupling (N, T - 1, nb, J, L) for the
// backward pass.
std::vector<torch::Tensor> forward(torch::Tensor u, torch::Tensor weight, int64_t iterations,
                                   double eps, bool keep) {
  check(u, weight, iterations);
  const int64_t N = u.size(0), I = u.size(1), K = u.size(2), J = weight.size(1), D = weight.size(2);
  const int64_t L = 64 / u.element_size(), nb = (I + L - 1) / L;
  const auto ul = lanes(u, L), wl = lanes(weight.unsqueeze(0), L)[0];  // (N, nb, K, L), (nb, J, D, K, L)
  auto v = u.new_empty({N, J, D}), c = u.new_empty({N, I, J});
  auto s_keep = u.new_empty({keep ? N : 0, iterations, J, D});
  auto c_keep = u.new_empty({keep ? N : 0, iterations - 1, nb, J, L});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dynamic_forward", [&] {
    using Vec = Lanes<scalar_t>::Vec;
    const scalar_t *pu = ul.data_ptr<scalar_t>(), *pw = wl.data_ptr<scalar_t>();
    scalar_t *pv = v.data_ptr<scalar_t>(), *pc = c.data_ptr<scalar_t>();
    scalar_t *ps = keep ? s_keep.data_ptr<scalar_t>() : nullptr;
    Vec* pk = keep && iterations > 1 ? reinterpret_cast<Vec*>(c_keep.data_ptr<scalar_t>()) : nullptr;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      route(pu + begin * nb * K * L, pw, end - begin, nb, I, K, J, D, iterations, eps,
            pv + begin * J * D, pc + begin * I * J, ps ? ps + begin * iterations * J * D : nullptr,
            pk ? pk + begin * (iterations - 1) * nb * J : nullptr);
    });
  });
  if (keep) return {v, c, s_keep, c_keep};
  return {v, c};
}

}  // namespace

// -> parents v (N, J, D) and the last iteration's coupling c (N, I, J).
std::vector<torch::Tensor> dynamic_forward(torch::Tensor u, torch::Tensor weight, int64_t iterations,
                                           double eps) {
  return forward(u, weight, iterations, eps, false);
}

// -> v, c and what dynamic_backward needs: every pass's s and later passes' couplings.
std::vector<torch::Tensor> dynamic_forward_train(torch::Tensor u, torch::Tensor weight,
                                                 int64_t iterations, double eps) {
  return forward(u, weight, iterations, eps, true);
}

// -> the gradients of u (N, I, K) and weight (I, J, D, K) from those of v (N, J, D) and c
// (N, I, J; or None). Each thread adds its examples' share of the weight's gradient to a
// copy of its own; the copies are summed at the end.
std::vector<torch::Tensor> dynamic_backward(torch::Tensor u, torch::Tensor weight, int64_t iterations,
                                            double eps, torch::Tensor s_keep, torch::Tensor c_keep,
                                            torch::Tensor grad_v, c10::optional<torch::Tensor> grad_c) {
  check(u, weight, iterations);
  const int64_t N = u.size(0), I = u.size(1), K = u.size(2), J = weight.size(1), D = weight.size(2);
  const int64_t L = 64 / u.element_size(), nb = (I + L - 1) / L;
  TORCH_CHECK(s_keep.sizes() == at::IntArrayRef({N, iterations, J, D}) && s_keep.is_contiguous() &&
                  c_keep.sizes() == at::IntArrayRef({N, iterations - 1, nb, J, L}) && c_keep.is_contiguous(),
              "s_keep and c_keep must be dynamic_forward_train's");
  const auto ul = lanes(u, L), wl = lanes(weight.unsqueeze(0), L)[0];
  const auto gv = grad_v.to(u.scalar_type()).contiguous();
  TORCH_CHECK(gv.sizes() == at::IntArrayRef({N, J, D}), "grad_v must be (N, J, D)");
  torch::Tensor gc;
  if (grad_c) gc = lanes(grad_c->to(u.scalar_type()), L);  // (N, nb, J, L)
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N));
  auto gu = u.new_empty({N, nb, K, L}), gw = u.new_zeros({P, nb, J, D, K, L});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dynamic_backward", [&] {
    using Vec = Lanes<scalar_t>::Vec;
    const auto vec = [](const torch::Tensor& x) {
      return x.defined() && x.numel() ? reinterpret_cast<const Vec*>(x.data_ptr<scalar_t>()) : nullptr;
    };
    const scalar_t *pu = ul.data_ptr<scalar_t>(), *pw = wl.data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t lo = N * p / P, hi = N * (p + 1) / P;
        route_backward(pu + lo * nb * K * L, pw, hi - lo, nb, K, J, D, iterations, eps,
                       s_keep.data_ptr<scalar_t>() + lo * iterations * J * D,
                       vec(c_keep) ? vec(c_keep) + lo * (iterations - 1) * nb * J : nullptr,
                       gv.data_ptr<scalar_t>() + lo * J * D, vec(gc) ? vec(gc) + lo * nb * J : nullptr,
                       gu.data_ptr<scalar_t>() + lo * nb * K * L, gw[p].data_ptr<scalar_t>());
      }
    });
  });
  const auto gw_sum = (P > 1 ? gw.sum(0) : gw[0]).unsqueeze(0);  // (1, nb, J, D, K, L)
  return {unlanes(gu, I), unlanes(gw_sum, I)[0]};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dynamic_forward", &dynamic_forward, "votes and dynamic routing of fully connected capsules");
  m.def("dynamic_forward_train", &dynamic_forward_train, "dynamic_forward, keeping what the backward needs");
  m.def("dynamic_backward", &dynamic_backward, "the gradients of dynamic_forward_train's inputs");
}
