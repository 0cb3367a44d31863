// Where element (r, c) of a [rows, cols] weight lives in the kernels' panel layout (BF16 and
// FP8 alike, counted in elements). Shared by the CPU kernels, the packing code and the CUDA
// unpacker, so there is one definition.
//
// 32 output rows form a panel; within a panel, input features go in pairs (c, c + 1): for each
// pair, 64 elements = two halves (rows 0-15, rows 16-31) of 16 lanes, and lane i holds row
// half·16 + i at c (low) then c + 1 (high). That is the operand layout of VDPBF16PS and of an
// AMX B tile (stride 128 bytes in bf16), and a float kernel widens it with one shift (c) and one
// mask (c + 1) per 16 rows. cols is padded to even; rows past the end and the pad are zero.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DAEDALUS_HOST_DEVICE __host__ __device__
#else
#define DAEDALUS_HOST_DEVICE
#endif

namespace daedalus {

constexpr int64_t kPanelRows = 32;  // output rows per panel
constexpr int64_t kPanelPair = 64;  // elements per input pair of a panel

DAEDALUS_HOST_DEVICE constexpr int64_t PaddedCols(int64_t cols) { return (cols + 1) / 2 * 2; }

DAEDALUS_HOST_DEVICE constexpr int64_t PanelIndex(int64_t r, int64_t c, int64_t cols) {
  const int64_t slot = r % kPanelRows;
  return (r / kPanelRows) * PaddedCols(cols) * kPanelRows + (c / 2) * kPanelPair + (slot / 16) * 32 + (slot % 16) * 2 +
         c % 2;
}

// Elements of the packed copy of a [rows, cols] weight.
DAEDALUS_HOST_DEVICE constexpr int64_t PackedElements(int64_t rows, int64_t cols) {
  return (rows + kPanelRows - 1) / kPanelRows * kPanelRows * PaddedCols(cols);
}

}  // namespace daedalus
