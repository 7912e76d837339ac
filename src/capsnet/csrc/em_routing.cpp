// EM routing for convolutional matrix capsules, forward and hand-written backward, on the CPU.
//
// Procedure 1 of Hinton, Sabour & Frosst (2018) with capsule_em's schedule, variance floor
// and mass, and the cost standardised over the parents: the maths of capsnet/em_routing.py,
// computed one routing problem at a time so that its votes V_ij = M_i W_ij stay in cache.
// Between the passes, each problem keeps each iteration's R, mu, sigma^2, cost and logits
// (about 1/8 of its votes' size for 3 iterations) but not the votes: the backward pass makes
// them again, then walks the iterations in reverse with the adjoint of each E- and M-step.
// Built on first use by capsnet/native.py; capsnet/em_conv.py is the reference it is tested
// against, and the path taken where this cannot be built.
//
// Shapes: N routing problems, I children, J parents, D = 16 pose components; poses M
// (N, I, 16) (4x4 row-major), weight W (I, J, 16), acts a (N, I), beta_u and beta_a (J).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int D = 16;
constexpr double kMinVar = 5e-4, kMassEps = 1e-5, kStdEps = 1e-6;

template <typename T>
T log_sigmoid(T x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// The D = 16 pose components of one vote as one vector (GCC/Clang vector extensions).
template <typename T, int N>
struct Lanes {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};

template <typename T>
using Vec = typename Lanes<T, D>::type;

template <typename T>
Vec<T> load(const T* p) {
  Vec<T> x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

template <typename T>
void store(T* p, Vec<T> x) {
  std::memcpy(p, &x, sizeof x);
}

template <typename T, int N = D>
T sum(typename Lanes<T, N>::type x) {  // pairwise: halves added, not 15 adds in a chain
  if constexpr (N == 2) {
    return x[0] + x[1];
  } else {
    typename Lanes<T, N / 2>::type lo, hi;
    std::memcpy(&lo, &x, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
    return sum<T, N / 2>(lo + hi);
  }
}

template <typename T>
T log_sum(Vec<T> x) {  // sum_d log x_d
  T s = 0;
  for (int d = 0; d < D; ++d) s += std::log(x[d]);
  return s;
}

// One routing problem's buffers, reused for every problem a thread routes. The weight comes
// as Wp (I, 4, J, 4): W_ij[q][c] at Wp[i][q][j][c], so that V_i = M_i Wp_i is a (4x4) @
// (4 x 4J) product with contiguous rows.
template <typename T>
struct Problem {
  int64_t I, J, iters;
  const T *bu, *ba;
  std::vector<double> lambdas;
  std::vector<T> v;                          // (J, I, D) votes
  std::vector<T> R;                          // (iters, J, I): the R each M-step used
  std::vector<T> mu, var;                    // (iters, J, D)
  std::vector<T> mass, cost, logit, stats;   // (iters, J); stats (iters, 2): mean, std
  std::vector<T> gv, gr, gmu, gvar, glogit;  // adjoints: (J, I, D), (J, I), (J, D) x2, (J)
  std::vector<T> row;                        // (4, 4J): one child's votes or their adjoint

  Problem(int64_t i, int64_t j, std::vector<double> lam, const T* beta_u, const T* beta_a)
      : I(i), J(j), iters(static_cast<int64_t>(lam.size())), bu(beta_u), ba(beta_a),
        lambdas(std::move(lam)), v(j * i * D), R(iters * j * i), mu(iters * j * D),
        var(iters * j * D), mass(iters * j), cost(iters * j), logit(iters * j),
        stats(iters * 2), gv(j * i * D), gr(j * i), gmu(j * D), gvar(j * D), glogit(j),
        row(4 * 4 * j) {}

  void votes(const T* m, const T* wp) {  // v[j][i] = M_i (4x4) @ W_ij (4x4)
    const int64_t X = 4 * J;
    for (int64_t i = 0; i < I; ++i) {
      const T *mi = m + i * D, *wi = wp + i * 4 * X;
      std::fill(row.begin(), row.end(), T(0));
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {
          const T s = mi[r * 4 + q];
          T* out = &row[r * X];
          const T* w = wi + q * X;
          for (int64_t x = 0; x < X; ++x) out[x] += s * w[x];
        }
      for (int64_t j = 0; j < J; ++j)
        for (int r = 0; r < 4; ++r) std::memcpy(&v[(j * I + i) * D + r * 4], &row[r * X + j * 4], 4 * sizeof(T));
    }
  }

  // M-step t: mu_j = sum_i w_ij V_ij, sigma^2_j = sum_i w_ij (V_ij - mu_j)^2 + kMinVar with
  // w_ij = R_ij a_i / m_j, m_j = sum_i R_ij a_i + kMassEps; cost_j = (D beta_u + 1/2 sum_d
  // log sigma^2_jd) m_j; logit_j = lambda_t (beta_a + (mean_k cost_k - cost_j) / std_k cost_k).
  void m_step(int64_t t, const T* a) {
    for (int64_t j = 0; j < J; ++j) {
      const T *rj = &R[(t * J + j) * I], *vj = &v[j * I * D];
      T m = kMassEps;
      for (int64_t i = 0; i < I; ++i) m += rj[i] * a[i];
      const T inv_m = T(1) / m;
      Vec<T> s1 = {}, s2 = {};
      for (int64_t i = 0; i < I; ++i) s1 += (rj[i] * a[i] * inv_m) * load(vj + i * D);
      for (int64_t i = 0; i < I; ++i) {
        const Vec<T> e = load(vj + i * D) - s1;
        s2 += (rj[i] * a[i] * inv_m) * e * e;
      }
      const Vec<T> var_j = s2 + T(kMinVar);
      store(&mu[(t * J + j) * D], s1);
      store(&var[(t * J + j) * D], var_j);
      mass[t * J + j] = m;
      cost[t * J + j] = (D * bu[j] + T(0.5) * log_sum<T>(var_j)) * m;
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
      const T* vj = &v[j * I * D];
      const Vec<T> mu_j = load(&mu[(t * J + j) * D]), var_j = load(&var[(t * J + j) * D]);
      const Vec<T> inv = T(1) / var_j;
      const T base = log_sigmoid(logit[t * J + j]) - T(0.5) * log_sum<T>(T(2 * M_PI) * var_j);
      for (int64_t i = 0; i < I; ++i) {
        const Vec<T> e = load(vj + i * D) - mu_j;
        out[j * I + i] = base - T(0.5) * sum<T>(e * e * inv);
      }
    }
    for (int64_t i = 0; i < I; ++i) {
      T top = -INFINITY, z = 0;
      for (int64_t j = 0; j < J; ++j) top = std::max(top, out[j * I + i]);
      for (int64_t j = 0; j < J; ++j) z += (out[j * I + i] = std::exp(out[j * I + i] - top));
      for (int64_t j = 0; j < J; ++j) out[j * I + i] /= z;
    }
  }

  void forward(const T* m, const T* wp, const T* a) {
    votes(m, wp);
    std::fill(R.begin(), R.begin() + J * I, T(1) / J);
    for (int64_t t = 0; t < iters; ++t) {
      m_step(t, a);
      if (t + 1 < iters) e_step(t);
    }
  }

  // Adjoint of M-step t, given gmu, gvar, glogit of its outputs: adds to g_bu, g_ba, g_a,
  // to gv if with_votes, and leaves dL/dR(t)_ij in gr.
  void m_step_backward(int64_t t, const T* a, T* g_a, T* g_bu, T* g_ba, bool with_votes) {
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
      const T gcost = (-lam * glogit[j] - mean_gy - y * mean_gyy) / sd;
      const Vec<T> mu_j = load(&mu[(t * J + j) * D]), var_j = load(&var[(t * J + j) * D]);
      const T *rj = &R[(t * J + j) * I], *vj = &v[j * I * D];
      g_bu[j] += D * m * gcost;
      // dL/dm_j through the cost: cost_j / m_j = D beta_u_j + 1/2 sum_d log sigma^2_jd
      const T gm = gcost * cost[t * J + j] / m;
      const Vec<T> gs = load(&gvar[j * D]) + T(0.5) * m * gcost / var_j;
      // s_d = sum_i w_i (V_id - mu_d)^2 depends on mu: ds/dmu = -2 mu (1 - sum_i w_i)
      const Vec<T> gm1 = load(&gmu[j * D]) - T(2) * gs * mu_j * (T(kMassEps) / m);
      T* grj = &gr[j * I];
      T* gvj = &gv[j * I * D];
      T wg = 0;  // sum_i w_i dL/dw_i
      for (int64_t i = 0; i < I; ++i) {
        const T w = rj[i] * a[i] / m;
        const Vec<T> vi = load(vj + i * D), e = vi - mu_j;
        const T gw = sum<T>(gm1 * vi + gs * e * e);
        if (with_votes) store(gvj + i * D, load(gvj + i * D) + w * (gm1 + T(2) * gs * e));
        grj[i] = gw;
        wg += w * gw;
      }
      // w_i = r_i / m, m = sum_i r_i + eps, r_i = R_i a_i
      for (int64_t i = 0; i < I; ++i) {
        const T g_r = (grj[i] - wg) / m + gm;
        g_a[i] += g_r * rj[i];
        grj[i] = g_r * a[i];
      }
    }
  }

  // Adjoint of E-step t, given dL/dR(t+1) in gr: sets gmu, gvar, glogit of iteration t and
  // adds to gv if with_votes.
  void e_step_backward(int64_t t, bool with_votes) {
    const T* out = &R[(t + 1) * J * I];
    for (int64_t i = 0; i < I; ++i) {  // softmax over j: gL = R (gR - sum_k R_k gR_k)
      T s = 0;
      for (int64_t j = 0; j < J; ++j) s += out[j * I + i] * gr[j * I + i];
      for (int64_t j = 0; j < J; ++j) gr[j * I + i] = out[j * I + i] * (gr[j * I + i] - s);
    }
    for (int64_t j = 0; j < J; ++j) {
      const T* vj = &v[j * I * D];
      const Vec<T> mu_j = load(&mu[(t * J + j) * D]), inv = T(1) / load(&var[(t * J + j) * D]);
      const T* gl = &gr[j * I];
      Vec<T> gm = {}, ge2 = {};
      T total = 0;
      T* gvj = &gv[j * I * D];
      for (int64_t i = 0; i < I; ++i) {
        const Vec<T> e = load(vj + i * D) - mu_j;
        total += gl[i];
        gm += gl[i] * e;
        ge2 += gl[i] * e * e;
        if (with_votes) store(gvj + i * D, load(gvj + i * D) - gl[i] * e * inv);
      }
      glogit[j] = sigmoid(-logit[t * J + j]) * total;
      store(&gmu[j * D], gm * inv);
      store(&gvar[j * D], T(0.5) * (ge2 * inv - total) * inv);
    }
  }

  // dL/dM_i and dL/dWp_i (added) from gv: V_i = M_i Wp_i, (4x4) @ (4 x 4J).
  void vote_backward(const T* m, const T* wp, T* g_m, T* g_wp) {
    const int64_t X = 4 * J;
    for (int64_t i = 0; i < I; ++i) {
      for (int64_t j = 0; j < J; ++j)
        for (int r = 0; r < 4; ++r) std::memcpy(&row[r * X + j * 4], &gv[(j * I + i) * D + r * 4], 4 * sizeof(T));
      const T *mi = m + i * D, *wi = wp + i * 4 * X;
      T *gmi = g_m + i * D, *gwi = g_wp + i * 4 * X;
      for (int r = 0; r < 4; ++r)
        for (int q = 0; q < 4; ++q) {
          const T *g = &row[r * X], *w = wi + q * X;
          const T s = mi[r * 4 + q];
          T dot = 0;
          for (int64_t x = 0; x < X; ++x) {
            dot += g[x] * w[x];
            gwi[q * X + x] += s * g[x];
          }
          gmi[r * 4 + q] += dot;
        }
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

  void backward(const T* m, const T* wp, const T* a, const T* state, const T* g_mu,
                const T* g_act, T* g_m, T* g_wp, T* g_a, T* g_bu, T* g_ba, bool detach) {
    votes(m, wp);
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
      m_step_backward(t, a, g_a, g_bu, g_ba, !detach || t == last);
      if (t > 0) e_step_backward(t - 1, !detach);
    }
    vote_backward(m, wp, g_m, g_wp);
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

// W (I, J, 16) as Wp (I, 4, J, 4): W_ij[q][c] at Wp[i][q][j][c].
torch::Tensor by_rows(const torch::Tensor& weight) {
  return weight.view({weight.size(0), weight.size(1), 4, 4}).permute({0, 2, 1, 3}).contiguous();
}

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
  const auto wp = by_rows(weight);
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_forward", [&] {
    const scalar_t *m = poses.data_ptr<scalar_t>(), *w = wp.data_ptr<scalar_t>();
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
  auto g_m = torch::zeros_like(poses), g_a = torch::zeros_like(acts);
  // one accumulator per thread for the gradients shared by all problems, summed in order
  const int64_t threads = at::get_num_threads();
  auto g_w = weight.new_zeros({threads, I, 4, J, 4});  // dL/dWp per thread
  const auto wp = by_rows(weight);
  auto g_bu = beta_u.new_zeros({threads, J}), g_ba = beta_a.new_zeros({threads, J});
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_backward", [&] {
    const scalar_t *m = poses.data_ptr<scalar_t>(), *w = wp.data_ptr<scalar_t>();
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
  auto g_weight = g_w.sum(0).permute({0, 2, 1, 3}).reshape({I, J, D});
  return {g_m, g_weight, g_a, g_bu.sum(0), g_ba.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("em_forward", &em_forward, "EM routing of convolutional matrix capsules, forward");
  m.def("em_backward", &em_backward, "EM routing of convolutional matrix capsules, backward");
}
