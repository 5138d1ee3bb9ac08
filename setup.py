"""Build script for genkernels.

Build switches (environment variables), all optional:

  GENKERNELS_NO_EXT=1     pure-Python install: no C++ extension is built. The
                          `reference` and `triton` backends still work; the `cpu`
                          and `cuda` backends report themselves unavailable.
  FORCE_CUDA=1            build the CUDA sources (csrc/cuda/*) even when no GPU is
                          visible. Without it they are built when torch has CUDA
                          and `nvcc` is found (CUDA_HOME).
  TORCH_CUDA_ARCH_LIST    CUDA architectures to build for; defaults to "8.0;9.0a"
                          when no GPU is visible (A100 and H100 class).
  DEBUG=1                 -O0 -g, no -DNDEBUG, for gdb / sanitizers.
  MAX_JOBS                parallel compile jobs (read by torch's ninja builder).

At run time (not a build switch): the CPU BMU micro-kernel is compiled for AVX2 and
AVX-512 and picked by the CPU it runs on; GENKERNELS_CPU_ISA=avx2 forces the AVX2
kernel (the tests use it to cover both on an AVX-512 machine), and =none makes
som_patch_bmu run the portable loop it takes in builds without the micro-kernel. For large D the search
takes its dot products from at::mm on row tiles (chosen by measured crossover);
GENKERNELS_CPU_GEMM=0|1 forces that path off or on. On CUDA, som_online runs one
thread block per map or, for few large maps, a cooperative kernel with several blocks
per map (chosen per launch); GENKERNELS_SOM_ONLINE_BLOCKS=1 forces the former, =N > 1
the latter with up to N blocks per map, =auto (the default) restores the choice.

The extension is `genkernels._C`: C++20, OpenMP, -O3. It registers its ops in the
`genkernels` torch library namespace (csrc/genkernels.cpp); importing
`genkernels` loads it when present.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NO_EXT = os.environ.get("GENKERNELS_NO_EXT", "0") == "1"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"
DEBUG = os.environ.get("DEBUG", "0") == "1"


def _extensions():
    if NO_EXT:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    with_cuda = FORCE_CUDA or (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"

    opt = ["-O0", "-g"] if DEBUG else ["-O3", "-DNDEBUG"]
    # -march=native would make the wheel unportable; AVX2+FMA is every x86-64 machine
    # of the last decade and what the BMU micro-kernel is written for.
    arch = ["-mavx2", "-mfma"] if sys.platform.startswith("linux") and os.uname().machine == "x86_64" else []
    cxx = ["-std=c++20", "-fopenmp", *opt, *arch, "-Wall", "-Wno-unknown-pragmas"]
    sources = ["csrc/genkernels.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    include = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*_ops.cpp"))
        # no --use_fast_math: sqrt, division and exp must round as in the reference, so
        # that exact ties (lowest index wins) and step-for-step SOM updates agree
        ext = cpp_extension.CUDAExtension(
            "genkernels._C",
            sources,
            include_dirs=include,
            extra_compile_args={"cxx": cxx + ["-DGENKERNELS_WITH_CUDA"],
                                "nvcc": ["-std=c++20", *opt, "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "genkernels._C", sources, include_dirs=include,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="genkernels",
    version="0.1.0",
    description="Fast kernels and ready models for self-organizing maps, Hopfield networks "
                "(classical and modern retrieval), Boltzmann machines, RBMs, DBNs, Ising "
                "lattices, PixelCNN and MADE, for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["genkernels", "genkernels.*"]),
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "minisom", "import-linter"],
        "bench": ["pytest-benchmark", "minisom", "torchsom", "xpysom", "nflows", "zuko"],
    },
    entry_points={"console_scripts": ["genkernels=genkernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
