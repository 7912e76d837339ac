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
#include <type_traits>
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

template <typename T, int N>
struct Lanes {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};

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

// The D = 16 pose components of one vote as K registers of the CPU's vector width (AVX-512:
// one, AVX: two floats or four doubles; GCC/Clang vector extensions). A single 64-byte
// vector type would be split by the compiler through the stack on CPUs without AVX-512.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Vec {
  static constexpr int L = kVecBytes / sizeof(T) < D ? kVecBytes / sizeof(T) : D, K = D / L;
  typedef T Lane __attribute__((vector_size(L * sizeof(T))));
  Lane x[K];
  T operator[](int d) const { return x[d / L][d % L]; }
};

template <typename T, typename F>
Vec<T> map2(const Vec<T>& a, const Vec<T>& b, F f) {
  Vec<T> r;
  for (int k = 0; k < Vec<T>::K; ++k) r.x[k] = f(a.x[k], b.x[k]);
  return r;
}

template <typename T>
Vec<T> broadcast(T s) {
  Vec<T> r;
  for (int k = 0; k < Vec<T>::K; ++k) r.x[k] = s - typename Vec<T>::Lane{};
  return r;
}

template <typename T>
Vec<T> operator+(const Vec<T>& a, const Vec<T>& b) { return map2(a, b, [](auto u, auto v) { return u + v; }); }
template <typename T>
Vec<T> operator-(const Vec<T>& a, const Vec<T>& b) { return map2(a, b, [](auto u, auto v) { return u - v; }); }
template <typename T>
Vec<T> operator*(const Vec<T>& a, const Vec<T>& b) { return map2(a, b, [](auto u, auto v) { return u * v; }); }
template <typename T>
Vec<T> operator/(const Vec<T>& a, const Vec<T>& b) { return map2(a, b, [](auto u, auto v) { return u / v; }); }
template <typename T>
Vec<T> operator*(T s, const Vec<T>& a) { return broadcast(s) * a; }
template <typename T>
Vec<T> operator*(const Vec<T>& a, T s) { return a * broadcast(s); }
template <typename T>
Vec<T> operator/(T s, const Vec<T>& a) { return broadcast(s) / a; }
template <typename T>
Vec<T> operator+(const Vec<T>& a, T s) { return a + broadcast(s); }
template <typename T>
Vec<T> operator-(const Vec<T>& a, T s) { return a - broadcast(s); }
template <typename T>
Vec<T>& operator+=(Vec<T>& a, const Vec<T>& b) { return a = a + b; }

// One register at a time: a copy of the whole Vec would go through the stack in pieces of
// another width, which stalls the loads that follow (store forwarding fails).
template <typename T>
Vec<T> load(const T* p) {
  Vec<T> x;
  for (int k = 0; k < Vec<T>::K; ++k) std::memcpy(&x.x[k], p + k * Vec<T>::L, sizeof x.x[k]);
  return x;
}

template <typename T>
void store(T* p, const Vec<T>& x) {
  for (int k = 0; k < Vec<T>::K; ++k) std::memcpy(p + k * Vec<T>::L, &x.x[k], sizeof x.x[k]);
}

template <typename T, int N>
T lane_sum(typename Lanes<T, N>::type x) {  // pairwise: halves added, not N - 1 adds in a chain
  if constexpr (N == 2) {
    return x[0] + x[1];
  } else {
    typename Lanes<T, N / 2>::type lo, hi;
    std::memcpy(&lo, &x, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
    return lane_sum<T, N / 2>(lo + hi);
  }
}

template <typename T>
T sum(const Vec<T>& v) {  // sum_d v_d
  auto s = v.x[0];
  for (int k = 1; k < Vec<T>::K; ++k) s += v.x[k];
  return lane_sum<T, Vec<T>::L>(s);
}

template <typename T>
T log_sum(const Vec<T>& x) {  // sum_d log x_d
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
  std::vector<T> top, z;                     // (I): the softmax's max and 1 / sum per child

  Problem(int64_t i, int64_t j, std::vector<double> lam, const T* beta_u, const T* beta_a)
      : I(i), J(j), iters(static_cast<int64_t>(lam.size())), bu(beta_u), ba(beta_a),
        lambdas(std::move(lam)), v(j * i * D), R(iters * j * i), mu(iters * j * D),
        var(iters * j * D), mass(iters * j), cost(iters * j), logit(iters * j),
        stats(iters * 2), gv(j * i * D), gr(j * i), gmu(j * D), gvar(j * D), glogit(j),
        row(4 * 4 * j), top(i), z(i) {}

  void votes(const T* m, const T* wp) {  // v[j][i] = M_i (4x4) @ W_ij (4x4)
    const int64_t X = 4 * J;
    for (int64_t i = 0; i < I; ++i) {
      const T *mi = m + i * D, *wi = wp + i * 4 * X;
      for (int r = 0; r < 4; ++r) {  // row r = sum_q M_i[r][q] Wp_i[q]: one store per element
        const T m0 = mi[r * 4], m1 = mi[r * 4 + 1], m2 = mi[r * 4 + 2], m3 = mi[r * 4 + 3];
        T* out = &row[r * X];
        for (int64_t x = 0; x < X; ++x)
          out[x] = m0 * wi[x] + m1 * wi[X + x] + m2 * wi[2 * X + x] + m3 * wi[3 * X + x];
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
    // softmax over j, row by row so that the inner loops run along i (contiguous)
    std::copy(out, out + I, top.begin());
    for (int64_t j = 1; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) top[i] = std::max(top[i], out[j * I + i]);
    std::fill(z.begin(), z.end(), T(0));
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) z[i] += (out[j * I + i] = exp_nonpositive(out[j * I + i] - top[i]));
    for (int64_t i = 0; i < I; ++i) z[i] = T(1) / z[i];
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) out[j * I + i] *= z[i];
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
    // softmax over j: gL = R (gR - sum_k R_k gR_k), row by row (z holds the sums)
    std::fill(z.begin(), z.end(), T(0));
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) z[i] += out[j * I + i] * gr[j * I + i];
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i) gr[j * I + i] = out[j * I + i] * (gr[j * I + i] - z[i]);
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
      const T *g0 = &row[0], *g1 = &row[X], *g2 = &row[2 * X], *g3 = &row[3 * X];
      for (int q = 0; q < 4; ++q) {  // dWp_i[q] += sum_r M_i[r][q] G[r]: one update per element
        const T s0 = mi[q], s1 = mi[4 + q], s2 = mi[8 + q], s3 = mi[12 + q];
        T* gw = gwi + q * X;
        for (int64_t x = 0; x < X; ++x) gw[x] += s0 * g0[x] + s1 * g1[x] + s2 * g2[x] + s3 * g3[x];
      }
      for (int r = 0; r < 4; ++r)  // dM_i[r][q] = G[r] . Wp_i[q]
        for (int q = 0; q < 4; ++q) {
          const T *g = &row[r * X], *w = wi + q * X;
          T dot = 0;
          for (int64_t x = 0; x < X; ++x) dot += g[x] * w[x];
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
