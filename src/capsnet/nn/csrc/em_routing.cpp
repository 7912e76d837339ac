// EM routing for convolutional matrix capsules, forward and hand-written backward, on the CPU.
//
// Procedure 1 of Hinton, Sabour & Frosst (2018) with capsule_em's schedule, variance floor
// and mass, and the cost standardised over the parents: the maths of capsnet/nn/em.py,
// computed one routing problem at a time, so that its votes V_ij = M_i W_ij need a buffer of
// one problem's size, not the batch's.
// Between the passes, each problem keeps each iteration's R, mu, sigma^2, cost and logits
// (about 1/8 of its votes' size for 3 iterations) but not the votes: the backward pass makes
// them again, then walks the iterations in reverse with the adjoint of each E- and M-step.
// The maths of one problem are in em_problem.h; this file checks the inputs and runs the
// problems in parallel. Built on first use by capsnet/native.py; capsnet/em_conv.py is the
// reference it is tested against, and the path taken where this cannot be built.
//
// Shapes: N routing problems, I children, J parents, D = 16 pose components; poses M
// (N, I, 16) (4x4 row-major), weight W (I, J, 16), acts a (N, I), beta_u and beta_a (J).
// Inside, every array runs along the children: poses as Mt (N, D, I), the weight as Wt
// (J, D, I), the votes as (J, D, I). Each inner loop is then one contiguous pass over i that
// the compiler vectorises at the CPU's own width, and no sum over the 16 pose components is
// taken within a vector (the sums over i are one per parent and component).

#include "em_problem.h"

#include <ATen/Parallel.h>

#include <vector>

namespace {

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
