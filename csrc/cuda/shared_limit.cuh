// The dynamic shared memory a persistent one-block-per-item kernel may opt into (the
// Hopfield recall and Boltzmann Gibbs kernels keep an item's working set there when it
// fits, else in a global scratch slice). Setting the environment variable named by
// `force_global_env` to 1 reports 0 bytes, so every working set goes to the global
// scratch even where it would fit (the tests cover that path with small sizes).
#pragma once

#include <cuda_runtime.h>

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

}  // namespace genkernels::cuda_common
