// Op string arguments -> the enums of csrc/common/som.h, shared by the cpu and cuda
// bindings (host code with torch headers; the .cu kernels take the enums as ints).
#pragma once
#include <torch/library.h>

#include <string_view>

#include "common/som.h"

namespace genkernels::som {

inline Metric parse_metric(std::string_view name) {
  if (name == "euclidean") return Metric::Euclidean;
  if (name == "cosine") return Metric::Cosine;
  if (name == "manhattan") return Metric::Manhattan;
  if (name == "chebyshev") return Metric::Chebyshev;
  TORCH_CHECK(false, "metric must be one of 'euclidean', 'cosine', 'manhattan', 'chebyshev'; got '",
              name, "'");
}

inline Neighborhood parse_neighborhood(std::string_view name) {
  if (name == "gaussian") return Neighborhood::Gaussian;
  if (name == "bubble") return Neighborhood::Bubble;
  if (name == "mexican_hat") return Neighborhood::MexicanHat;
  if (name == "triangle") return Neighborhood::Triangle;
  TORCH_CHECK(false, "neighborhood must be one of 'gaussian', 'bubble', 'mexican_hat', "
              "'triangle'; got '", name, "'");
}

inline Rule parse_rule(std::string_view name) {
  if (name == "som") return Rule::Som;
  if (name == "wta") return Rule::Wta;
  if (name == "wtm") return Rule::Wtm;
  TORCH_CHECK(false, "rule must be one of 'som', 'wta', 'wtm'; got '", name, "'");
}

}  // namespace genkernels::som
