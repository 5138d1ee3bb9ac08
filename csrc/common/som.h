// Per-element SOM arithmetic shared by the cpu/ and cuda/ kernels (host and device), so
// the CPU tests exercise the same formulas the GPU runs. Templated on the accumulation
// type: float for fp32/fp16/bf16 inputs, double for fp64.
#pragma once
#include <cmath>

#include "common/hd.h"

namespace genkernels::som {

enum class Metric : int { Euclidean = 0, Cosine = 1, Manhattan = 2, Chebyshev = 3 };
enum class Neighborhood : int { Gaussian = 0, Bubble = 1, MexicanHat = 2, Triangle = 3 };
enum class Rule : int { Som = 0, Wta = 1, Wtm = 2 };

// Cosine distance is 1 - x.w / (|x| |w| + kCosineEps), as MiniSom defines it.
constexpr double kCosineEps = 1e-8;

// Distance along one lattice axis, the short way round a torus of `period` (0 = flat).
template <typename T>
GK_HD T lattice_delta(T a, T b, T period) {
  using std::fabs;
  using std::fmin;
  T d = fabs(a - b);
  if (period > T(0)) d = fmin(d, period - d);
  return d;
}

// Neighborhood value for lattice offsets dx, dy >= 0 at radius sigma > 0; 1 at the
// winner. Gaussian, bubble and triangle are products of one function per axis (what
// makes the separable batch smoothing exact on rectangular grids); the Mexican hat
// depends on the Euclidean lattice distance. The winner-takes-most rule calls this
// with (rho, 0): a non-increasing kernel of the data-space distance rho.
// The exponential is supplied by the caller: the CPU kernels pass a branch-free exp
// (csrc/cpu/som_cpu.h) so a whole map's neighbourhood vectorises; neighborhood() below
// passes the standard one.
template <typename T, typename Exp>
GK_HD_FORCEINLINE T neighborhood_with_exp(Neighborhood kind, T dx, T dy, T sigma, Exp exp_fn) {
  using std::fmax;
  switch (kind) {
    case Neighborhood::Gaussian: {
      const T d = T(2) * sigma * sigma;
      return exp_fn(-(dx * dx + dy * dy) / d);
    }
    case Neighborhood::Bubble:
      return (dx < sigma && dy < sigma) ? T(1) : T(0);
    case Neighborhood::MexicanHat: {
      const T d = T(2) * sigma * sigma;
      const T p = dx * dx + dy * dy;
      return exp_fn(-p / d) * (T(1) - T(2) / d * p);
    }
    case Neighborhood::Triangle:
      return fmax(T(0), T(1) - dx / sigma) * fmax(T(0), T(1) - dy / sigma);
  }
  return T(0);
}

struct StdExp {
  template <typename T>
  GK_HD T operator()(T v) const {
    using std::exp;
    return exp(v);
  }
};

template <typename T>
GK_HD T neighborhood(Neighborhood kind, T dx, T dy, T sigma) {
  return neighborhood_with_exp(kind, dx, dy, sigma, StdExp{});
}

}  // namespace genkernels::som
