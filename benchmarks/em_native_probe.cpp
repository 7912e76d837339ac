// A probe, not library code: EM routing's forward pass (Procedure 1, capsule_em's schedule,
// variance floor and mass) for convolutional matrix capsules, one routing problem at a time
// with its votes in a buffer that stays in cache: V_ij = M_i W_ij, then per iteration an
// M-step (two passes over the votes) and, except the last, an E-step and a softmax over the
// parents. Plain loops, compiled with -O3 -march=native -ffast-math (sums reassociated, so
// vectorised); no backward pass. See em_native_probe.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr float kMinVar = 5e-4f, kMassEps = 1e-5f;

float log_sigmoid(float x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

struct Problem {  // one routing problem's buffers: I children, J parents, D = 16
  int64_t I, J;
  std::vector<float> v, r, mu, var, cost, logit, log_norm;
  Problem(int64_t i, int64_t j)
      : I(i), J(j), v(i * j * 16), r(i * j), mu(j * 16), var(j * 16), cost(j), logit(j),
        log_norm(j) {}

  void votes(const float* m, const float* w) {  // v[j][i] = M_i (4x4) @ W_ij (4x4)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t j = 0; j < J; ++j) {
        const float* mi = m + i * 16;
        const float* wij = w + (i * J + j) * 16;
        float* out = &v[(j * I + i) * 16];
        for (int row = 0; row < 4; ++row)
          for (int col = 0; col < 4; ++col) {
            float s = 0;
            for (int q = 0; q < 4; ++q) s += mi[row * 4 + q] * wij[q * 4 + col];
            out[row * 4 + col] = s;
          }
      }
  }

  void m_step(const float* beta_u, float lambda, const float* beta_a) {
    for (int64_t j = 0; j < J; ++j) {
      const float* rj = &r[j * I];
      const float* vj = &v[j * I * 16];
      float mass = kMassEps, s1[16] = {0}, s2[16] = {0}, log_var = 0;
      for (int64_t i = 0; i < I; ++i) mass += rj[i];
      for (int64_t i = 0; i < I; ++i)
        for (int d = 0; d < 16; ++d) s1[d] += rj[i] / mass * vj[i * 16 + d];
      for (int64_t i = 0; i < I; ++i)
        for (int d = 0; d < 16; ++d) {
          const float e = vj[i * 16 + d] - s1[d];
          s2[d] += rj[i] / mass * e * e;
        }
      for (int d = 0; d < 16; ++d) {
        mu[j * 16 + d] = s1[d];
        var[j * 16 + d] = s2[d] + kMinVar;
        log_var += std::log(var[j * 16 + d]);
      }
      cost[j] = (16 * beta_u[j] + 0.5f * log_var) * mass;
      log_norm[j] = 0.5f * (16 * std::log(2.0f * static_cast<float>(M_PI)) + log_var);
    }
    float mean = 0, sq = 0;
    for (int64_t j = 0; j < J; ++j) mean += cost[j] / J;
    for (int64_t j = 0; j < J; ++j) sq += (cost[j] - mean) * (cost[j] - mean) / J;
    const float sd = std::sqrt(sq + 1e-6f);
    for (int64_t j = 0; j < J; ++j) logit[j] = lambda * (beta_a[j] + (mean - cost[j]) / sd);
  }

  void e_step(const float* a) {  // r[j][i] = softmax_j(log a_j p_j(V_ij)) * a_i
    for (int64_t j = 0; j < J; ++j) {
      const float* vj = &v[j * I * 16];
      const float* mj = &mu[j * 16];
      float inv[16];
      for (int d = 0; d < 16; ++d) inv[d] = 1.0f / var[j * 16 + d];
      const float base = log_sigmoid(logit[j]) - log_norm[j];
      for (int64_t i = 0; i < I; ++i) {
        float q = 0;
        for (int d = 0; d < 16; ++d) {
          const float e = vj[i * 16 + d] - mj[d];
          q += e * e * inv[d];
        }
        r[j * I + i] = base - 0.5f * q;
      }
    }
    for (int64_t i = 0; i < I; ++i) {
      float top = -INFINITY, z = 0;
      for (int64_t j = 0; j < J; ++j) top = std::max(top, r[j * I + i]);
      for (int64_t j = 0; j < J; ++j) z += (r[j * I + i] = std::exp(r[j * I + i] - top));
      for (int64_t j = 0; j < J; ++j) r[j * I + i] *= a[i] / z;
    }
  }
};

}  // namespace

// poses (N, I, 16), weight (I, J, 16), acts (N, I), beta_u (J), beta_a (J), all float32
// -> mu (N, J, 16), activations (N, J)
std::vector<torch::Tensor> em_forward(torch::Tensor poses, torch::Tensor weight,
                                      torch::Tensor acts, torch::Tensor beta_u,
                                      torch::Tensor beta_a, std::vector<double> lambdas) {
  const int64_t N = acts.size(0), I = acts.size(1), J = weight.size(1);
  auto p = poses.contiguous(), w = weight.contiguous(), a = acts.contiguous();
  auto mu_out = torch::empty({N, J, 16}), a_out = torch::empty({N, J});
  const float *pp = p.data_ptr<float>(), *wp = w.data_ptr<float>(), *ap = a.data_ptr<float>();
  const float *bu = beta_u.data_ptr<float>(), *ba = beta_a.data_ptr<float>();
  float *mo = mu_out.data_ptr<float>(), *ao = a_out.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    Problem pr(I, J);
    for (int64_t n = begin; n < end; ++n) {
      const float* an = ap + n * I;
      pr.votes(pp + n * I * 16, wp);
      for (int64_t j = 0; j < J; ++j)
        for (int64_t i = 0; i < I; ++i) pr.r[j * I + i] = an[i] / J;
      for (size_t t = 0; t < lambdas.size(); ++t) {
        pr.m_step(bu, static_cast<float>(lambdas[t]), ba);
        if (t + 1 < lambdas.size()) pr.e_step(an);
      }
      for (int64_t j = 0; j < J; ++j) {
        for (int d = 0; d < 16; ++d) mo[(n * J + j) * 16 + d] = pr.mu[j * 16 + d];
        ao[n * J + j] = 1.0f / (1.0f + std::exp(-pr.logit[j]));
      }
    }
  });
  return {mu_out, a_out};
}
