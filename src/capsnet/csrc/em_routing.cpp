// EM routing for convolutional matrix capsules, forward and hand-written backward, on the CPU.
//
// Procedure 1 of Hinton, Sabour & Frosst (2018) with capsule_em's schedule, variance floor
// and mass, and the cost standardised over the parents: the maths of capsnet/em_routing.py,
// computed one routing problem at a time, so that its votes V_ij = M_i W_ij need a buffer of
// one problem's size, not the batch's.
// Between the passes, each problem keeps each iteration's R, mu, sigma^2, cost and logits
// (about 1/8 of its votes' size for 3 iterations) but not the votes: the backward pass makes
// them again, then walks the iterations in reverse with the adjoint of each E- and M-step.
// Built on first use by capsnet/native.py; capsnet/em_conv.py is the reference it is tested
// against, and the path taken where this cannot be built.
//
// Shapes: N routing problems, I children, J parents, D = 16 pose components; poses M
// (N, I, 16) (4x4 row-major), weight W (I, J, 16), acts a (N, I), beta_u and beta_a (J).
// Inside, every array runs along the children: poses as Mt (N, D, I), the weight as Wt
// (J, D, I), the votes as (J, D, I). Each inner loop is then one contiguous pass over i that
// the compiler vectorises at the CPU's own width, and no sum over the 16 pose components is
// taken within a vector (the sums over i are one per parent and component).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int D = 16;
constexpr double kMinVar = 5e-4, kMassEps = 1e-5, kStdEps = 1e-6;

template <typename T>
T log_sigmoid(T x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

template <typename T>
T sq(T x) {
  return x * x;
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// exp(x) for x <= 0 (the softmax's logits less their maximum), in a form the compiler
// vectorises (std::exp stays a scalar call): Cody-Waite reduction x = n ln 2 + r, Cephes'
// degree-6 polynomial for exp(r) (relative error about 1e-7), 2^n from the exponent bits;
// 0 below -87, where exp(x) leaves float's normal range. Doubles keep std::exp.
template <typename T>
T exp_nonpositive(T x) {
  if constexpr (!std::is_same_v<T, float>) {
    return std::exp(x);
  } else {
    const float c = std::max(x, -87.0f), n = std::floor(c * 1.44269504088896341f + 0.5f);
    const float r = c - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    for (const float k : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                          5.0000001201e-1f})
      p = p * r + k;
    const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
    return x < -87.0f ? 0.0f : (p * r * r + r + 1.0f) * scale;
  }
}

// One routing problem's buffers, reused for every problem a thread routes.
template <typename T>
struct Problem {
  int64_t I, J, iters;
  const T *bu, *ba;
  std::vector<double> lambdas;
  std::vector<T> v;                          // (J, D, I) votes
  std::vector<T> R;                          // (iters, J, I): the R each M-step used
  std::vector<T> mu, var;                    // (iters, J, D)
  std::vector<T> mass, cost, logit, stats;   // (iters, J); stats (iters, 2): mean, std
  std::vector<T> gv, gr, gmu, gvar, glogit;  // adjoints: (J, D, I), (J, I), (J, D) x2, (J)
  std::vector<T> w, top, z;                  // (I): M-step weights; the softmax's max, sums

  Problem(int64_t i, int64_t j, std::vector<double> lam, const T* beta_u, const T* beta_a)
      : I(i), J(j), iters(static_cast<int64_t>(lam.size())), bu(beta_u), ba(beta_a),
        lambdas(std::move(lam)), v(j * D * i), R(iters * j * i), mu(iters * j * D),
        var(iters * j * D), mass(iters * j), cost(iters * j), logit(iters * j),
        stats(iters * 2), gv(j * D * i), gr(j * i), gmu(j * D), gvar(j * D), glogit(j),
        w(i), top(i), z(i) {}

  // v[j][r*4+c][i] = sum_q M_i[r][q] W_ij[q][c]
  void votes(const T* mt, const T* wt) {
    for (int64_t j = 0; j < J; ++j)
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) {
          const T *m0 = mt + (r * 4) * I, *wj = wt + (j * D + c) * I;
          T* out = &v[(j * D + r * 4 + c) * I];
          for (int64_t i = 0; i < I; ++i)
            out[i] = m0[i] * wj[i] + m0[I + i] * wj[4 * I + i] + m0[2 * I + i] * wj[8 * I + i] +
                     m0[3 * I + i] * wj[12 * I + i];
        }
  }

  // w_i = R_ij a_i / m_j for parent j of iteration t, its mass m_j given
  void weights(int64_t t, int64_t j, const T* a, T m) {
    const T *rj = &R[(t * J + j) * I], inv_m = T(1) / m;
    for (int64_t i = 0; i < I; ++i) w[i] = rj[i] * a[i] * inv_m;
  }

  // M-step t: mu_j = sum_i w_ij V_ij, sigma^2_j = sum_i w_ij (V_ij - mu_j)^2 + kMinVar;
  // cost_j = (D beta_u + 1/2 sum_d log sigma^2_jd) m_j; logit_j = lambda_t (beta_a +
  // (mean_k cost_k - cost_j) / std_k cost_k).
  void m_step(int64_t t, const T* a) {
    for (int64_t j = 0; j < J; ++j) {
      const T* rj = &R[(t * J + j) * I];
      T m = kMassEps;  // m_j = sum_i R_ij a_i + kMassEps
      for (int64_t i = 0; i < I; ++i) m += rj[i] * a[i];
      weights(t, j, a, m);
      const T* vj = &v[j * D * I];
      T *mu_j = &mu[(t * J + j) * D], *var_j = &var[(t * J + j) * D], log_var = 0;
      for (int d0 = 0; d0 < D; d0 += 8) {  // 8 components at once: 8 independent sums
        T s1[8] = {}, s2[8] = {};
        for (int64_t i = 0; i < I; ++i)
          for (int k = 0; k < 8; ++k) s1[k] += w[i] * vj[(d0 + k) * I + i];
        for (int64_t i = 0; i < I; ++i)
          for (int k = 0; k < 8; ++k) s2[k] += w[i] * sq(vj[(d0 + k) * I + i] - s1[k]);
        for (int k = 0; k < 8; ++k) {
          mu_j[d0 + k] = s1[k];
          var_j[d0 + k] = s2[k] + T(kMinVar);
          log_var += std::log(var_j[d0 + k]);
        }
      }
      mass[t * J + j] = m;
      cost[t * J + j] = (D * bu[j] + T(0.5) * log_var) * m;
    }
    const T* c = &cost[t * J];
    T mean = 0, sq = 0;
    for (int64_t j = 0; j < J; ++j) mean += c[j] / J;
    for (int64_t j = 0; j < J; ++j) sq += (c[j] - mean) * (c[j] - mean) / J;
    const T sd = std::sqrt(sq + T(kStdEps));
    stats[t * 2] = mean;
    stats[t * 2 + 1] = sd;
    for (int64_t j = 0; j < J; ++j)
      logit[t * J + j] = T(lambdas[t]) * (ba[j] + (mean - c[j]) / sd);
  }

  // E-step t: R(t+1)_ij = softmax_j(log sigmoid(logit_j) + log N(V_ij; mu_j, sigma^2_j)).
  void e_step(int64_t t) {
    T* out = &R[(t + 1) * J * I];
    for (int64_t j = 0; j < J; ++j) {
      const T *mu_j = &mu[(t * J + j) * D], *var_j = &var[(t * J + j) * D];
      T base = log_sigmoid(logit[t * J + j]);
      for (int d = 0; d < D; ++d) base -= T(0.5) * std::log(T(2 * M_PI) * var_j[d]);
      T* oj = out + j * I;
      std::fill(oj, oj + I, base);
      const T* vj = &v[j * D * I];
      for (int d0 = 0; d0 < D; d0 += 8) {  // 8 components a pass over the row
        T m[8], h[8];
        for (int k = 0; k < 8; ++k) m[k] = mu_j[d0 + k], h[k] = T(0.5) / var_j[d0 + k];
        for (int64_t i = 0; i < I; ++i) {
          T q = 0;
          for (int k = 0; k < 8; ++k) q += h[k] * sq(vj[(d0 + k) * I + i] - m[k]);
          oj[i] -= q;
        }
      }
    }
    std::copy(out, out + I, top.begin());  // softmax over j
    for (int64_t j = 1; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) top[i] = std::max(top[i], out[j * I + i]);
    std::fill(z.begin(), z.end(), T(0));
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) z[i] += (out[j * I + i] = exp_nonpositive(out[j * I + i] - top[i]));
    for (int64_t i = 0; i < I; ++i) z[i] = T(1) / z[i];
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) out[j * I + i] *= z[i];
  }

  void forward(const T* mt, const T* wt, const T* a) {
    votes(mt, wt);
    std::fill(R.begin(), R.begin() + J * I, T(1) / J);
    for (int64_t t = 0; t < iters; ++t) {
      m_step(t, a);
      if (t + 1 < iters) e_step(t);
    }
  }

  // Adjoint of M-step t, given gmu, gvar, glogit of its outputs: adds to g_bu, g_ba, g_a,
  // to gv if with_votes, and leaves dL/dR(t)_ij in gr. With e_pending, gr holds on entry
  // the logits' adjoint of E-step t, whose term in gv (see e_step_backward) is added here, in
  // the same pass over the votes as the M-step's own.
  void m_step_backward(int64_t t, const T* a, T* g_a, T* g_bu, T* g_ba, bool with_votes,
                       bool e_pending) {
    const T lam = T(lambdas[t]), mean = stats[t * 2], sd = stats[t * 2 + 1];
    // logit_j = lam (beta_a_j - y_j), y_j = (cost_j - mean) / sd: a standardisation's adjoint
    T mean_gy = 0, mean_gyy = 0;
    for (int64_t j = 0; j < J; ++j) {
      const T gy = -lam * glogit[j], y = (cost[t * J + j] - mean) / sd;
      g_ba[j] += lam * glogit[j];
      mean_gy += gy / J;
      mean_gyy += gy * y / J;
    }
    for (int64_t j = 0; j < J; ++j) {
      const T y = (cost[t * J + j] - mean) / sd, m = mass[t * J + j];
      weights(t, j, a, m);
      const T gcost = (-lam * glogit[j] - mean_gy - y * mean_gyy) / sd;
      g_bu[j] += D * m * gcost;
      // dL/dm_j through the cost: cost_j / m_j = D beta_u_j + 1/2 sum_d log sigma^2_jd
      const T gm = gcost * cost[t * J + j] / m;
      const T *mu_j = &mu[(t * J + j) * D], *var_j = &var[(t * J + j) * D], *vj = &v[j * D * I];
      const auto adjoints = [&](int d) {  // dL/d(sum before the floor), dL/dmu_jd in all
        const T gs = gvar[j * D + d] + T(0.5) * m * gcost / var_j[d];
        // s_d = sum_i w_i (V_id - mu_d)^2 depends on mu: ds/dmu = -2 mu (1 - sum_i w_i)
        return std::make_pair(gs, gmu[j * D + d] - T(2) * gs * mu_j[d] * (T(kMassEps) / m));
      };
      T* grj = &gr[j * I];
      for (int d = 0; d < D && with_votes; ++d) {
        const auto [gs, gm1] = adjoints(d);
        const T *vd = vj + d * I, mu_d = mu_j[d], inv = T(1) / var_j[d];
        T* gvd = &gv[(j * D + d) * I];
        if (e_pending)
          for (int64_t i = 0; i < I; ++i)
            gvd[i] += w[i] * (gm1 + T(2) * gs * (vd[i] - mu_d)) - grj[i] * (vd[i] - mu_d) * inv;
        else
          for (int64_t i = 0; i < I; ++i) gvd[i] += w[i] * (gm1 + T(2) * gs * (vd[i] - mu_d));
      }
      std::fill(grj, grj + I, T(0));  // dL/dw_i = sum_d gm1_d V_id + gs_d (V_id - mu_d)^2
      for (int d = 0; d < D; ++d) {
        const auto [gs, gm1] = adjoints(d);
        const T *vd = vj + d * I, mu_d = mu_j[d];
        for (int64_t i = 0; i < I; ++i) grj[i] += gm1 * vd[i] + gs * sq(vd[i] - mu_d);
      }
      T wg = 0;  // sum_i w_i dL/dw_i
      for (int64_t i = 0; i < I; ++i) wg += w[i] * grj[i];
      // w_i = r_i / m, m = sum_i r_i + eps, r_i = R_i a_i
      const T* rj = &R[(t * J + j) * I];
      for (int64_t i = 0; i < I; ++i) {
        const T g_r = (grj[i] - wg) / m + gm;
        g_a[i] += g_r * rj[i];
        grj[i] = g_r * a[i];
      }
    }
  }

  // Adjoint of E-step t, given dL/dR(t+1) in gr: sets gmu, gvar, glogit of iteration t and
  // leaves dL/dlogits in gr; their term in gv, -gl_i (V_id - mu_d) / sigma^2_d, is added by
  // m_step_backward(t) (same mu, sigma^2).
  void e_step_backward(int64_t t) {
    const T* out = &R[(t + 1) * J * I];
    // softmax over j: gL = R (gR - sum_k R_k gR_k), row by row (z holds the sums)
    std::fill(z.begin(), z.end(), T(0));
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) z[i] += out[j * I + i] * gr[j * I + i];
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) gr[j * I + i] = out[j * I + i] * (gr[j * I + i] - z[i]);
    for (int64_t j = 0; j < J; ++j) {
      const T* gl = &gr[j * I];
      T total = 0;
      for (int64_t i = 0; i < I; ++i) total += gl[i];
      const T *vj = &v[j * D * I], *mu_j = &mu[(t * J + j) * D], *var_j = &var[(t * J + j) * D];
      for (int d0 = 0; d0 < D; d0 += 8) {  // 8 components at once: 8 independent sums each
        T ge[8] = {}, ge2[8] = {};
        for (int64_t i = 0; i < I; ++i)
          for (int k = 0; k < 8; ++k) {
            const T e = vj[(d0 + k) * I + i] - mu_j[d0 + k];
            ge[k] += gl[i] * e;
            ge2[k] += gl[i] * e * e;
          }
        for (int k = 0; k < 8; ++k) {
          const T inv = T(1) / var_j[d0 + k];
          gmu[j * D + d0 + k] = ge[k] * inv;
          gvar[j * D + d0 + k] = T(0.5) * (ge2[k] * inv - total) * inv;
        }
      }
      glogit[j] = sigmoid(-logit[t * J + j]) * total;
    }
  }

  // dL/dMt and dL/dWt (added) from gv: V[j][r*4+c] = sum_q Mt[r*4+q] Wt[j][q*4+c].
  void vote_backward(const T* mt, const T* wt, T* g_mt, T* g_wt) {
    for (int64_t j = 0; j < J; ++j)
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {  // dMt[r*4+q] += sum_c G[j][r*4+c] Wt[j][q*4+c]
          const T *g = &gv[(j * D + r * 4) * I], *wq = wt + (j * D + q * 4) * I;
          T* gm = g_mt + (r * 4 + q) * I;
          for (int64_t i = 0; i < I; ++i)
            gm[i] += g[i] * wq[i] + g[I + i] * wq[I + i] + g[2 * I + i] * wq[2 * I + i] +
                     g[3 * I + i] * wq[3 * I + i];
        }
    for (int64_t j = 0; j < J; ++j)
      for (int q = 0; q < 4; ++q)
        for (int c = 0; c < 4; ++c) {  // dWt[j][q*4+c] += sum_r Mt[r*4+q] G[j][r*4+c]
          const T *g = &gv[(j * D + c) * I], *m = mt + q * I;
          T* gw = g_wt + (j * D + q * 4 + c) * I;
          for (int64_t i = 0; i < I; ++i)
            gw[i] += m[i] * g[i] + m[4 * I + i] * g[4 * I + i] + m[8 * I + i] * g[8 * I + i] +
                     m[12 * I + i] * g[12 * I + i];
        }
  }

  // What the backward pass needs of the iterations, beside the votes: R(t) for t >= 1 and
  // each iteration's mu, sigma^2, mass, cost, logits, mean and std of the cost.
  std::vector<std::vector<T>*> kept() {
    return {&R, &mu, &var, &mass, &cost, &logit, &stats};
  }

  int64_t state_size() {
    int64_t size = -J * I;  // R(0) = 1/J is not kept
    for (auto* x : kept()) size += static_cast<int64_t>(x->size());
    return size;
  }

  void save(T* out) {
    for (auto* x : kept()) {
      const auto from = x->begin() + (x == &R ? J * I : 0);
      out = std::copy(from, x->end(), out);
    }
  }

  void restore(const T* in) {
    std::fill(R.begin(), R.begin() + J * I, T(1) / J);
    for (auto* x : kept()) {
      const auto to = x->begin() + (x == &R ? J * I : 0);
      std::copy(in, in + (x->end() - to), to);
      in += x->end() - to;
    }
  }

  void backward(const T* mt, const T* wt, const T* a, const T* state, const T* g_mu,
                const T* g_act, T* g_mt, T* g_wt, T* g_a, T* g_bu, T* g_ba, bool detach) {
    votes(mt, wt);
    restore(state);
    const int64_t last = iters - 1;
    std::fill(gv.begin(), gv.end(), T(0));
    std::fill(gvar.begin(), gvar.end(), T(0));
    std::copy(g_mu, g_mu + J * D, gmu.begin());
    for (int64_t j = 0; j < J; ++j) {
      const T s = sigmoid(logit[last * J + j]);
      glogit[j] = g_act[j] * s * (1 - s);
    }
    for (int64_t t = last; t >= 0; --t) {
      m_step_backward(t, a, g_a, g_bu, g_ba, !detach || t == last, t < last && !detach);
      if (t > 0) e_step_backward(t - 1);
    }
    vote_backward(mt, wt, g_mt, g_wt);
  }
};

void check(const torch::Tensor& poses, const torch::Tensor& weight, const torch::Tensor& acts,
           const torch::Tensor& beta_u, const torch::Tensor& beta_a) {
  TORCH_CHECK(poses.dim() == 3 && poses.size(2) == D, "poses must be (N, I, 16)");
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == D, "weight must be (I, J, 16)");
  TORCH_CHECK(acts.dim() == 2 && acts.size(0) == poses.size(0) && acts.size(1) == poses.size(1),
              "acts must be (N, I)");
  TORCH_CHECK(weight.size(0) == poses.size(1), "weight must have I rows");
  TORCH_CHECK(beta_u.numel() == weight.size(1) && beta_a.numel() == weight.size(1),
              "beta_u and beta_a must have J entries");
  for (const auto* t : {&poses, &weight, &acts, &beta_u, &beta_a})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == poses.scalar_type(),
                "inputs must be contiguous CPU tensors of one dtype");
}

// Poses (N, I, 16) as Mt (N, 16, I); the weight (I, J, 16) as Wt (J, 16, I).
torch::Tensor along_children(const torch::Tensor& poses) { return poses.transpose(1, 2).contiguous(); }
torch::Tensor weight_along_children(const torch::Tensor& w) { return w.permute({1, 2, 0}).contiguous(); }

}  // namespace

// -> mu (N, J, 16), activations (N, J) and, if keep, the state em_backward needs (N, S)
// (S = 2 J I + 3 J (2 D + 3) + 6 for 3 iterations), else an empty tensor.
std::vector<torch::Tensor> em_forward(torch::Tensor poses, torch::Tensor weight, torch::Tensor acts,
                                      torch::Tensor beta_u, torch::Tensor beta_a,
                                      std::vector<double> lambdas, bool keep) {
  check(poses, weight, acts, beta_u, beta_a);
  const int64_t N = acts.size(0), I = acts.size(1), J = weight.size(1);
  auto mu_out = poses.new_empty({N, J, D}), a_out = poses.new_empty({N, J});
  const int64_t S = keep ? Problem<float>(I, J, lambdas, nullptr, nullptr).state_size() : 0;
  auto state = poses.new_empty({keep ? N : 0, S});
  const auto mt = along_children(poses), wt = weight_along_children(weight);
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_forward", [&] {
    const scalar_t *m = mt.data_ptr<scalar_t>(), *w = wt.data_ptr<scalar_t>();
    const scalar_t* a = acts.data_ptr<scalar_t>();
    scalar_t *mo = mu_out.data_ptr<scalar_t>(), *ao = a_out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Problem<scalar_t> pr(I, J, lambdas, beta_u.data_ptr<scalar_t>(), beta_a.data_ptr<scalar_t>());
      const int64_t last = pr.iters - 1;
      for (int64_t n = begin; n < end; ++n) {
        pr.forward(m + n * I * D, w, a + n * I);
        std::copy(&pr.mu[last * J * D], &pr.mu[(last + 1) * J * D], mo + n * J * D);
        for (int64_t j = 0; j < J; ++j) ao[n * J + j] = sigmoid(pr.logit[last * J + j]);
        if (keep) pr.save(state.data_ptr<scalar_t>() + n * S);
      }
    });
  });
  return {mu_out, a_out, state};
}

// -> dL/d poses, weight, acts, beta_u, beta_a for dL/dmu (N, J, 16) and dL/da (N, J), with
// the state em_forward kept; the votes are made again.
std::vector<torch::Tensor> em_backward(torch::Tensor poses, torch::Tensor weight, torch::Tensor acts,
                                       torch::Tensor beta_u, torch::Tensor beta_a,
                                       std::vector<double> lambdas, torch::Tensor state,
                                       torch::Tensor g_mu, torch::Tensor g_act, bool detach) {
  check(poses, weight, acts, beta_u, beta_a);
  const int64_t N = acts.size(0), I = acts.size(1), J = weight.size(1);
  const int64_t S = Problem<float>(I, J, lambdas, nullptr, nullptr).state_size();
  TORCH_CHECK(state.dim() == 2 && state.size(0) == N && state.size(1) == S && state.is_contiguous() &&
                  state.scalar_type() == poses.scalar_type(),
              "state must be em_forward's, (N, S)");
  g_mu = g_mu.contiguous().to(poses.scalar_type());
  g_act = g_act.contiguous().to(poses.scalar_type());
  auto g_m = poses.new_zeros({N, D, I}), g_a = torch::zeros_like(acts);  // dL/dMt
  // one accumulator per thread for the gradients shared by all problems, summed in order
  const int64_t threads = at::get_num_threads();
  auto g_w = weight.new_zeros({threads, J, D, I});  // dL/dWt per thread
  const auto mt = along_children(poses), wt = weight_along_children(weight);
  auto g_bu = beta_u.new_zeros({threads, J}), g_ba = beta_a.new_zeros({threads, J});
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_backward", [&] {
    const scalar_t *m = mt.data_ptr<scalar_t>(), *w = wt.data_ptr<scalar_t>();
    const scalar_t *a = acts.data_ptr<scalar_t>(), *gmo = g_mu.data_ptr<scalar_t>();
    const scalar_t* gao = g_act.data_ptr<scalar_t>();
    scalar_t *gm = g_m.data_ptr<scalar_t>(), *ga = g_a.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      const int64_t k = at::get_thread_num();
      Problem<scalar_t> pr(I, J, lambdas, beta_u.data_ptr<scalar_t>(), beta_a.data_ptr<scalar_t>());
      scalar_t* gw = g_w.data_ptr<scalar_t>() + k * I * J * D;
      scalar_t *gbu = g_bu.data_ptr<scalar_t>() + k * J, *gba = g_ba.data_ptr<scalar_t>() + k * J;
      for (int64_t n = begin; n < end; ++n)
        pr.backward(m + n * I * D, w, a + n * I, state.data_ptr<scalar_t>() + n * S, gmo + n * J * D,
                    gao + n * J, gm + n * I * D, gw, ga + n * I, gbu, gba, detach);
    });
  });
  auto g_weight = g_w.sum(0).permute({2, 0, 1}).contiguous();  // (I, J, 16)
  return {g_m.transpose(1, 2).contiguous(), g_weight, g_a, g_bu.sum(0), g_ba.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("em_forward", &em_forward, "EM routing of convolutional matrix capsules, forward");
  m.def("em_backward", &em_backward, "EM routing of convolutional matrix capsules, backward");
}
