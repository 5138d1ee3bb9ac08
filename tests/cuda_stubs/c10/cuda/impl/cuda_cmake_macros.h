#pragma once

// Test-only stand-in for the header that a CUDA build of PyTorch generates from
// c10/cuda/impl/cuda_cmake_macros.h.in (the CPU wheel does not ship it). Same
// content as the generated file of a shared-library build (every PyTorch wheel).
// Used by tests/test_static_bindings.py for g++ -fsyntax-only of csrc/cuda/*_ops.cpp;
// never on an include path of a real build.

#define C10_CUDA_BUILD_SHARED_LIBS
