#include "kernels/cuda/grouped_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/silu_mul.h"

namespace daedalus::cuda {

GemmLanes::~GemmLanes() {
  for (int i = 0; i < kLanes; ++i) {
    if (cublas_[i] != nullptr) cublasDestroy(cublas_[i]);
    if (done_[i] != nullptr) cudaEventDestroy(done_[i]);
    if (streams_[i] != nullptr) cudaStreamDestroy(streams_[i]);
  }
  if (fork_ != nullptr) cudaEventDestroy(fork_);
}

absl::Status GemmLanes::Ensure() {
  if (ready_) return absl::OkStatus();
  // What an earlier, failed call made is kept and not made again.
  if (fork_ == nullptr) DAEDALUS_CUDA_RETURN(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
  for (int i = 0; i < kLanes; ++i) {
    if (streams_[i] == nullptr) DAEDALUS_CUDA_RETURN(cudaStreamCreateWithFlags(&streams_[i], cudaStreamNonBlocking));
    if (done_[i] == nullptr) DAEDALUS_CUDA_RETURN(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming));
    if (cublas_[i] == nullptr) {
      if (absl::Status s = CublasError(cublasCreate(&cublas_[i]), "cublasCreate"); !s.ok()) return s;
    }
    if (absl::Status s = CublasError(cublasSetStream(cublas_[i], streams_[i]), "cublasSetStream"); !s.ok()) return s;
  }
  ready_ = true;
  return absl::OkStatus();
}

absl::Status GemmLanes::Fork(cudaStream_t stream) {
  DAEDALUS_CUDA_RETURN(cudaEventRecord(fork_, stream));
  for (int i = 0; i < kLanes; ++i) DAEDALUS_CUDA_RETURN(cudaStreamWaitEvent(streams_[i], fork_, 0));
  return absl::OkStatus();
}

absl::Status GemmLanes::Join(cudaStream_t stream, int used) {
  for (int i = 0; i < used && i < kLanes; ++i) {
    DAEDALUS_CUDA_RETURN(cudaEventRecord(done_[i], streams_[i]));
    DAEDALUS_CUDA_RETURN(cudaStreamWaitEvent(stream, done_[i], 0));
  }
  return absl::OkStatus();
}

absl::Status GroupedGemm(cublasHandle_t cublas, const GroupedGemmParams& p, GroupedGemmWorkspace& ws,
                         cudaStream_t stream) {
  if (absl::Status s = CublasError(cublasSetStream(cublas, stream), "cublasSetStream"); !s.ok()) return s;
  ws.a.clear(), ws.b.clear(), ws.c.clear(), ws.m.clear(), ws.n.clear(), ws.k.clear();
  for (int64_t g = 0; g < p.n_groups; ++g) {
    const int64_t rows = p.group_begin[g + 1] - p.group_begin[g];
    if (rows == 0) continue;
    if (p.w[g] == nullptr) return absl::InternalError(absl::StrCat("GroupedGemm: rows for group ", g, ", which has no weights"));
    // Column-major: y'[n, rows] = W'ᵀ [n, k] · x'[k, rows].
    ws.a.push_back(p.w[g]);
    ws.b.push_back(p.x + p.group_begin[g] * p.k);
    ws.c.push_back(p.y_bf16 != nullptr ? static_cast<void*>(p.y_bf16 + p.group_begin[g] * p.n)
                                       : static_cast<void*>(p.y + p.group_begin[g] * p.n));
    ws.m.push_back(static_cast<int>(p.n));
    ws.n.push_back(static_cast<int>(rows));
    ws.k.push_back(static_cast<int>(p.k));
  }
  const size_t groups = ws.a.size();
  if (groups == 0) return absl::OkStatus();
  const float one = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  const cudaDataType_t c_type = p.y_bf16 != nullptr ? CUDA_R_16BF : CUDA_R_32F;
  if (p.mode == GroupedGemmMode::kLoop || ws.grouped_unsupported) {
    // Several groups: round robin over the lanes, which wait for what came before on `stream`
    // and which `stream` waits for after (each group writes rows of its own).
    const int used = groups > 1 ? static_cast<int>(std::min<size_t>(groups, GemmLanes::kLanes)) : 0;
    if (used > 0) {
      if (absl::Status s = ws.lanes.Ensure(); !s.ok()) return s;
      if (absl::Status s = ws.lanes.Fork(stream); !s.ok()) return s;
    }
    for (size_t g = 0; g < groups; ++g) {
      const cublasStatus_t st =
          cublasGemmEx(used > 0 ? ws.lanes.cublas(static_cast<int>(g % used)) : cublas, CUBLAS_OP_T, CUBLAS_OP_N, ws.m[g],
                       ws.n[g], ws.k[g], &one, ws.a[g], CUDA_R_16BF, ws.k[g], ws.b[g], CUDA_R_16BF, ws.k[g], &beta, ws.c[g],
                       c_type, ws.m[g], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (absl::Status s = CublasError(st, "GroupedGemm: cublasGemmEx"); !s.ok()) {
        // The GEMMs already on the lanes still read and write this call's buffers: `stream`
        // waits for them, so that the caller's next use of those buffers comes after.
        if (used > 0) (void)ws.lanes.Join(stream, used);
        return s;
      }
    }
    return used > 0 ? ws.lanes.Join(stream, used) : absl::OkStatus();
  }
  // One grouped call: every problem its own group of one; pointer arrays in device memory.
  ws.ta.assign(groups, CUBLAS_OP_T);
  ws.tb.assign(groups, CUBLAS_OP_N);
  ws.lda = ws.k;
  ws.ldb = ws.k;
  ws.ldc = ws.m;
  ws.group_size.assign(groups, 1);
  ws.alpha.assign(groups, one);
  ws.beta.assign(groups, beta);
  if (absl::Status s = ws.pointers.Reserve(3 * groups * sizeof(void*)); !s.ok()) return s;
  auto** dev = ws.pointers.as<void*>();
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(dev, ws.a.data(), groups * sizeof(void*), cudaMemcpyHostToDevice, stream));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(dev + groups, ws.b.data(), groups * sizeof(void*), cudaMemcpyHostToDevice, stream));
  DAEDALUS_CUDA_RETURN(cudaMemcpyAsync(dev + 2 * groups, ws.c.data(), groups * sizeof(void*), cudaMemcpyHostToDevice, stream));
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      cublas, ws.ta.data(), ws.tb.data(), ws.m.data(), ws.n.data(), ws.k.data(), ws.alpha.data(),
      reinterpret_cast<const void* const*>(dev), CUDA_R_16BF, ws.lda.data(),
      reinterpret_cast<const void* const*>(dev + groups), CUDA_R_16BF, ws.ldb.data(), ws.beta.data(), dev + 2 * groups,
      c_type, ws.ldc.data(), static_cast<int>(groups), ws.group_size.data(), CUBLAS_COMPUTE_32F);
  if (st != CUBLAS_STATUS_SUCCESS) {
    // cuBLAS may refuse these types (bf16 inputs, fp32 output) as NOT_SUPPORTED or
    // INVALID_VALUE: the loop of GEMMs serves from then on, said once per process.
    static std::atomic<bool> said{false};
    if (!said.exchange(true)) {
      std::fprintf(stderr, "daedalus: cublasGemmGroupedBatchedEx refused bf16 -> %s (%s); expert GEMMs run as a loop\n",
                   p.y_bf16 != nullptr ? "bf16" : "fp32", cublasGetStatusName(st));
    }
    ws.grouped_unsupported = true;
    GroupedGemmParams loop = p;
    loop.mode = GroupedGemmMode::kLoop;
    return GroupedGemm(cublas, loop, ws, stream);
  }
  return absl::OkStatus();
}

absl::Status ExpertFfn(cublasHandle_t cublas, const ExpertFfnParams& p, ExpertFfnWorkspace& ws, cudaStream_t stream) {
  const int64_t rows = p.group_begin[p.n_experts];
  if (rows == 0) return absl::OkStatus();
  if (absl::Status s = ws.gate_up.Reserve(static_cast<size_t>(rows * 2 * p.inter) * 4); !s.ok()) return s;
  if (absl::Status s = ws.act.Reserve(static_cast<size_t>(rows * p.inter) * 2); !s.ok()) return s;
  const bool split = p.x_lo != nullptr;
  if (split) {
    if (absl::Status s = ws.act_lo.Reserve(static_cast<size_t>(rows * p.inter) * 2); !s.ok()) return s;
  }
  GroupedGemmParams gu{p.x, p.group_begin, p.n_experts, p.w_gate_up, 2 * p.inter, p.hidden, ws.gate_up.as<float>(), p.mode};
  if (absl::Status s = GroupedGemm(cublas, gu, ws.gemm, stream); !s.ok()) return s;
  if (split) {
    gu.x = p.x_lo, gu.accumulate = true;
    if (absl::Status s = GroupedGemm(cublas, gu, ws.gemm, stream); !s.ok()) return s;
  }
  SiluMulParams silu;
  silu.gate_up = ws.gate_up.as<float>();
  silu.rows = rows;
  silu.width = p.inter;
  silu.out_bf16 = ws.act.as<uint16_t>();
  silu.out_bf16_lo = split ? ws.act_lo.as<uint16_t>() : nullptr;
  if (absl::Status s = SiluMul(silu, stream); !s.ok()) return s;
  GroupedGemmParams down{ws.act.as<uint16_t>(), p.group_begin, p.n_experts, p.w_down, p.hidden, p.inter, p.y, p.mode};
  if (absl::Status s = GroupedGemm(cublas, down, ws.gemm, stream); !s.ok() || !split) return s;
  down.x = ws.act_lo.as<uint16_t>(), down.accumulate = true;
  return GroupedGemm(cublas, down, ws.gemm, stream);
}

}  // namespace daedalus::cuda
