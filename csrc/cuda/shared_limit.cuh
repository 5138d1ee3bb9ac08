// Placing the working set of a persistent one-block-per-item kernel (the Hopfield recall
// and Boltzmann Gibbs kernels): in dynamic shared memory up to the opt-in limit, else in a
// global scratch slice per item. Setting the environment variable named by
// `force_global_env` to 1 reports 0 bytes, so every working set goes to the global
// scratch even where it would fit (the tests cover that path with small sizes).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace genkernels::cuda_common {

inline cudaError_t opt_in_shared_limit(const char* force_global_env, int* optin) {
  const char* v = std::getenv(force_global_env);
  if (v != nullptr && v[0] == '1') {
    *optin = 0;
    return cudaSuccess;
  }
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

// Global scratch bytes a launch of `items` items needs: 0 when one item's working set
// (`item_bytes`) fits the opt-in shared memory, else items * item_bytes.
inline cudaError_t scratch_bytes(const char* force_global_env, int64_t item_bytes, int64_t items,
                                 int64_t* bytes) {
  int optin = 0;
  const cudaError_t err = opt_in_shared_limit(force_global_env, &optin);
  if (err != cudaSuccess) return err;
  *bytes = item_bytes <= optin ? 0 : items * item_bytes;
  return cudaSuccess;
}

// Where one item's working set of `item_bytes` lives for this launch of `kernel`: in
// dynamic shared memory (*in_shared, *dynamic = item_bytes, the kernel's limit raised past
// the default 48 KiB when needed) or in the caller's global scratch (*dynamic = 0; without
// scratch that is cudaErrorInvalidValue).
template <typename Kernel>
cudaError_t place_working_set(const char* force_global_env, Kernel kernel, int64_t item_bytes,
                              bool have_scratch, bool* in_shared, size_t* dynamic) {
  int optin = 0;
  cudaError_t err = opt_in_shared_limit(force_global_env, &optin);
  if (err != cudaSuccess) return err;
  *in_shared = item_bytes <= optin;
  if (!*in_shared && !have_scratch) return cudaErrorInvalidValue;
  *dynamic = *in_shared ? static_cast<size_t>(item_bytes) : 0;
  if (*dynamic > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(*dynamic));
  }
  return err;
}

}  // namespace genkernels::cuda_common
