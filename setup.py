"""tf_gibbs: Gibbs pruning, L0 gates and adaptive sparsity for tf_keras models."""

from setuptools import find_packages
from setuptools import setup

EXAMPLES = ["tensorflow-datasets>=4.9,<5", "scikit-learn>=1.3,<2", "matplotlib>=3.7,<4",
            "tensorboard>=2.21,<2.22"]  # PruningSummaries / TensorBoard logging
LITERT = ["ai-edge-litert>=2.0,<3"]

setup(
    name="tf_gibbs",
    version="0.1.0",
    description="Train-time pruning for tf_keras: Gibbs pruning, L0 gates, adaptive sparsity.",
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
    ],
    extras_require={
        "examples": EXAMPLES,
        "litert": LITERT,
        "test": ["pytest>=7", "scipy>=1.10,<2"] + EXAMPLES + LITERT,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
