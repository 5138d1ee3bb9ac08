import os

MNIST_DIR = os.environ.get("GENKERNELS_DATA") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")
