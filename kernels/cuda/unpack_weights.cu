#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/unpack_weights.h"
#include "kernels/panel_layout.h"

namespace daedalus::cuda {
namespace {

constexpr int64_t kBlock = 128;

__global__ void UnpackKernel(UnpackParams p) {
  const int64_t n = p.rows * p.cols, stride = p.out_stride ? p.out_stride : p.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.cols, c = i % p.cols;
    const int64_t panel = PanelIndex(r, c, p.cols);
    uint16_t v;
    switch (p.source) {
      case WeightSource::kPanelBf16:
        v = static_cast<const uint16_t*>(p.in)[panel];
        break;
      case WeightSource::kPanelFp8: {
        const int64_t scale_cols = (p.cols + kBlock - 1) / kBlock;
        const float s = p.scale_inv[(r / kBlock) * scale_cols + c / kBlock];
        v = ToBf16Bits(Fp8Value(static_cast<const uint8_t*>(p.in)[panel]) * s);
        break;
      }
      case WeightSource::kRowMajorF32:
        v = ToBf16Bits(static_cast<const float*>(p.in)[i]);
        break;
      default:
        v = static_cast<const uint16_t*>(p.in)[i];
        break;
    }
    p.out[r * stride + c] = v;
  }
}

}  // namespace

int64_t SourceElements(WeightSource source, int64_t rows, int64_t cols) {
  if (source == WeightSource::kPanelBf16 || source == WeightSource::kPanelFp8)
    return PackedElements(rows, cols);
  return rows * cols;
}

absl::Status UnpackWeight(const UnpackParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n == 0) return absl::OkStatus();
  const int blocks = static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
  UnpackKernel<<<blocks, 256, 0, stream>>>(p);
  return DAEDALUS_CUDA_LAUNCH_STATUS("UnpackWeight");
}

}  // namespace daedalus::cuda
