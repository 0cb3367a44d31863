// The generic tier: plain C++ over the panel layout, for x86-64 machines without AVX2 (and the
// meaning every faster tier must match within its bound).
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/tier.h"
#include "kernels/panel_layout.h"

namespace daedalus::cpu {
namespace {

// w(slot, j): the panel's weight for row `slot` at input k0 + 2·kp + j, as float.
template <typename Weight>
void PanelLoop(const PanelCall& c, Weight w) {
  const auto* x = static_cast<const float*>(c.x);
  for (int m = 0; m < c.mr; ++m) {
    float acc[kPanelRows];
    for (int s = 0; s < kPanelRows; ++s) acc[s] = c.accumulate && s < c.valid ? c.y[m][s] : 0.0f;
    for (int64_t kp = 0; kp < c.kn / 2; ++kp)
      for (int j = 0; j < 2; ++j) {
        const float xv = x[(2 * kp + j) * c.mr + m];
        for (int s = 0; s < kPanelRows; ++s) acc[s] += xv * w(kp, s, j);
      }
    for (int s = 0; s < c.valid; ++s) c.y[m][s] = acc[s];
  }
}

int64_t Lane(int s, int j) { return (s / 16) * 32 + (s % 16) * 2 + j; }

void PanelBf16(const PanelCall& c) {
  const auto* p = static_cast<const bf16*>(c.panel);
  PanelLoop(c, [p](int64_t kp, int s, int j) { return Bf16ToF32(p[kp * kPanelPair + Lane(s, j)]); });
}

void PanelFp8(const PanelCall& c) {
  const auto* p = static_cast<const uint8_t*>(c.panel);
  PanelLoop(c, [&c, p](int64_t kp, int s, int j) {
    const float scale = c.scales[(c.k0 + 2 * kp) / 128];
    return Fp8E4M3ToF32(p[kp * kPanelPair + Lane(s, j)]) * scale;
  });
}

void Exp(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = std::exp(std::fmin(std::fmax(v[i], -87.0f), 88.0f));
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  float sum = 0;
  for (float v : acc) sum += v;
  return sum;
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void DotRows(const float* q, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) out[j] = Dot(q, rows + j * stride, dim);
}

void AxpyRows(const float* w, const float* rows, int64_t stride, int64_t n_rows, int64_t dim, float* y) {
  for (int64_t j = 0; j < n_rows; ++j) Axpy(w[j], rows + j * stride, y, dim);
}

void DotKeys16(const float* q, const float* keys16, int64_t n, int64_t dim, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys16 + (j / 16) * dim * 16 + j % 16;
    float s = 0;
    for (int64_t d = 0; d < dim; ++d) s += q[d] * k[d * 16];
    out[j] = s;
  }
}

// e4m3 to float without a table: the code's magnitude bits moved to a float's exponent and
// mantissa fields (subnormal codes become float subnormals) times 2^120 restores the bias,
// exactly; then the scale, the one rounding.
void Fp8ToF32(const uint8_t* codes, int64_t n, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = (codes[i] & 0x7fu) << 20 | (codes[i] & 0x80u) << 24;
    float v;
    std::memcpy(&v, &bits, 4);
    out[i] = v * 0x1p120f * scale;
  }
}

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
}

double FmaProbe(int64_t iters) {
  float a[32];
  for (int i = 0; i < 32; ++i) a[i] = 0.001f * i;
  for (int64_t it = 0; it < iters; ++it)
    for (float& v : a) v = v * 0.999f + 0.0001f;
  volatile float sink = a[0] + a[31];
  (void)sink;
  return static_cast<double>(iters) * 32 * 2;
}

float ReadProbe(const float* v, size_t n) {
  float acc[16] = {};
  for (size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += v[i + j];
  float total = 0;
  for (float a : acc) total += a;
  return total;
}

}  // namespace

const TierKernels& GenericKernels() {
  static const TierKernels k{CpuIsa::kGeneric, false, nullptr, 4, PanelBf16, PanelFp8, nullptr, nullptr, Exp, nullptr, SiluMul, Dot, Axpy, DotRows, AxpyRows, nullptr, nullptr, DotKeys16, nullptr, Fp8ToF32, Bf16ToF32, FmaProbe, FmaProbe, ReadProbe, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  return k;
}

}  // namespace daedalus::cpu
