// cuBLAS, loaded on first use. Linking libcublas maps libcublasLt, whose start-up alone makes a
// process ~150 MiB resident: every daedalus process would pay that, the coordinator and CPU
// workers included. These definitions stand in for the cuBLAS entry points the kernels call (the
// program links no libcublas); the first call dlopens libcublas.so.<CUBLAS_VER_MAJOR> (by its
// name, then beside libcudart) and forwards. When it cannot be loaded, every call returns
// CUBLAS_STATUS_NOT_INITIALIZED and cublasGetStatusString says why.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <string>

#define DAEDALUS_STR2(x) #x
#define DAEDALUS_STR(x) DAEDALUS_STR2(x)

namespace {

constexpr const char* kSoname = "libcublas.so." DAEDALUS_STR(CUBLAS_VER_MAJOR);

struct Library {
  void* handle = nullptr;
  std::string error;  // why it could not be loaded
};

const Library& Cublas() {
  static const Library lib = [] {
    Library l;
    l.handle = dlopen(kSoname, RTLD_NOW | RTLD_LOCAL);
    if (l.handle != nullptr) return l;
    l.error = dlerror();
    Dl_info info;  // the directory of the libcudart this program runs with
    if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) != 0 && info.dli_fname != nullptr) {
      std::string path = info.dli_fname;
      path = path.substr(0, path.find_last_of('/') + 1) + kSoname;
      l.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (l.handle != nullptr) l.error.clear();
    }
    if (l.handle == nullptr) l.error = std::string("cuBLAS could not be loaded: ") + l.error;
    return l;
  }();
  return lib;
}

void* Symbol(const char* name) { return Cublas().handle != nullptr ? dlsym(Cublas().handle, name) : nullptr; }

}  // namespace

// The body of a stand-in: NAME's address in the library (looked up once), called with the
// arguments. PARAMS spells the C signature (cuBLAS adds C++ overloads of some names).
#define DAEDALUS_CUBLAS_FORWARD(name, params, ...)            \
  using Fn = cublasStatus_t(*) params;                        \
  static const auto fn = reinterpret_cast<Fn>(Symbol(#name)); \
  return fn != nullptr ? fn(__VA_ARGS__) : CUBLAS_STATUS_NOT_INITIALIZED

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  DAEDALUS_CUBLAS_FORWARD(cublasCreate_v2, (cublasHandle_t*), handle);
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  DAEDALUS_CUBLAS_FORWARD(cublasDestroy_v2, (cublasHandle_t), handle);
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
  DAEDALUS_CUBLAS_FORWARD(cublasSetStream_v2, (cublasHandle_t, cudaStream_t), handle, streamId);
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                                         cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t algo) {
  DAEDALUS_CUBLAS_FORWARD(
      cublasGemmEx,
      (cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*, cudaDataType, int,
       const void*, cudaDataType, int, const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t),
      handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo);
}

cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void* alpha,
    const void* A, cudaDataType Atype, int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
    long long int strideB, const void* beta, void* C, cudaDataType Ctype, int ldc, long long int strideC,
    int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  DAEDALUS_CUBLAS_FORWARD(
      cublasGemmStridedBatchedEx,
      (cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*, cudaDataType, int,
       long long int, const void*, cudaDataType, int, long long int, const void*, void*, cudaDataType, int,
       long long int, int, cublasComputeType_t, cublasGemmAlgo_t),
      handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc,
      strideC, batchCount, computeType, algo);
}

cublasStatus_t CUBLASWINAPI cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[], const cublasOperation_t transb_array[],
    const int m_array[], const int n_array[], const int k_array[], const void* alpha_array, const void* const Aarray[],
    cudaDataType_t Atype, const int lda_array[], const void* const Barray[], cudaDataType_t Btype,
    const int ldb_array[], const void* beta_array, void* const Carray[], cudaDataType_t Ctype, const int ldc_array[],
    int group_count, const int group_size[], cublasComputeType_t computeType) {
  DAEDALUS_CUBLAS_FORWARD(
      cublasGemmGroupedBatchedEx,
      (cublasHandle_t, const cublasOperation_t[], const cublasOperation_t[], const int[], const int[], const int[],
       const void*, const void* const[], cudaDataType_t, const int[], const void* const[], cudaDataType_t, const int[],
       const void*, void* const[], cudaDataType_t, const int[], int, const int[], cublasComputeType_t),
      handle, transa_array, transb_array, m_array, n_array, k_array, alpha_array, Aarray, Atype, lda_array, Barray,
      Btype, ldb_array, beta_array, Carray, Ctype, ldc_array, group_count, group_size, computeType);
}

cublasStatus_t CUBLASWINAPI cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                                      cublasOperation_t transb, int m, int n, int k, const float* alpha,
                                                      const float* A, int lda, long long int strideA, const float* B,
                                                      int ldb, long long int strideB, const float* beta, float* C,
                                                      int ldc, long long int strideC, int batchCount) {
  DAEDALUS_CUBLAS_FORWARD(
      cublasSgemmStridedBatched,
      (cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float*, const float*, int,
       long long int, const float*, int, long long int, const float*, float*, int, long long int, int),
      handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC, batchCount);
}

const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
  static const auto fn = reinterpret_cast<decltype(&cublasGetStatusName)>(Symbol("cublasGetStatusName"));
  return fn != nullptr ? fn(status) : "CUBLAS_STATUS_NOT_INITIALIZED";
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  static const auto fn = reinterpret_cast<decltype(&cublasGetStatusString)>(Symbol("cublasGetStatusString"));
  return fn != nullptr ? fn(status) : Cublas().error.c_str();
}

}  // extern "C"
