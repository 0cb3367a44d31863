// cuBLAS is loaded on first use (kernels/cuda/cublas_lazy.cc): nothing of it is mapped before,
// and the calls reach the real library after. Runs without a GPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

bool Mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  return text.str().find(library) != std::string::npos;
}

TEST(CublasLazy, LoadedOnFirstUseAndForwarded) {
  EXPECT_FALSE(Mapped("libcublasLt")) << "cuBLAS is mapped before any call";
  // The name comes from the real library; the stand-in would say NOT_INITIALIZED.
  EXPECT_STREQ(cublasGetStatusName(CUBLAS_STATUS_SUCCESS), "CUBLAS_STATUS_SUCCESS") << cublasGetStatusString(CUBLAS_STATUS_SUCCESS);
  EXPECT_STREQ(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
  EXPECT_TRUE(Mapped("libcublas.so")) << "cuBLAS was not loaded";
  int gpus = 0;
  const bool have_gpu = cudaGetDeviceCount(&gpus) == cudaSuccess && gpus > 0;
  cublasHandle_t handle = nullptr;
  const cublasStatus_t created = cublasCreate(&handle);
  if (have_gpu) {
    ASSERT_EQ(created, CUBLAS_STATUS_SUCCESS) << cublasGetStatusString(created);
    EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
  } else {
    EXPECT_NE(created, CUBLAS_STATUS_SUCCESS) << "a cuBLAS handle without a GPU";
  }
}

}  // namespace
