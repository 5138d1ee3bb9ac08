// GK_HD marks the functions of csrc/common that both the cpu kernels (host compiler) and the
// cuda kernels (nvcc, host and device) call: defined here once for every common header.
#pragma once

#if defined(__CUDACC__)
#define GK_HD __host__ __device__ __forceinline__
#define GK_HD_FORCEINLINE __host__ __device__ __forceinline__
#else
#define GK_HD inline
// Always inlined on the host too: for loops over nodes that must vectorise.
#define GK_HD_FORCEINLINE inline __attribute__((always_inline))
#endif
