// exp(x) for x <= 0, vectorisable: shared by the native routing kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace {

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

}  // namespace
