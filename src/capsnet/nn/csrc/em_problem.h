// EM routing's maths for one routing problem: the votes, the E- and M-steps and their
// adjoints, on arrays along the children (see em_routing.cpp for the shapes and the plan).
// Included by em_routing.cpp only: everything here is in an anonymous namespace.
#pragma once

#include <torch/extension.h>

#include "exp_nonpositive.h"

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int D = 16;
// MIN_VAR, MASS_EPS and STD_EPS of capsnet/nn/em.py, defined by capsnet/nn/native.py's build
#if !defined(CAPSNET_EM_MIN_VAR) || !defined(CAPSNET_EM_MASS_EPS) || !defined(CAPSNET_EM_STD_EPS)
#error "build through capsnet.nn.native, which defines capsnet.nn.em's EM constants"
#endif
constexpr double kMinVar = CAPSNET_EM_MIN_VAR, kMassEps = CAPSNET_EM_MASS_EPS,
                 kStdEps = CAPSNET_EM_STD_EPS;

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

}  // namespace
