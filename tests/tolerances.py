"""One dtype -> tolerance table for comparing backends with the reference.

fp32/fp64 results are compared at these tolerances. Low-precision (fp16/bf16) results
are bounded by PyTorch's own error in that dtype instead: a backend may be at most
twice as far from the exact value as PyTorch's computation in that dtype (see
test_bmu_low_precision in test_som_cpu.py).
"""
import torch

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}
