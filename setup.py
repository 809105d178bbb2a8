"""uio_ds: UIO-LLMs (unbiased incremental optimisation of memory-enhanced long-context LLMs) on DeepSpeed."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "uio_ds" / "__init__.py").read_text()).group(1)

setup(
    name="uio_ds",
    version=version,
    description="Memory-enhanced long-context LLMs (UIO-LLMs) trained with unbiased incremental TBPTT on DeepSpeed",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["uio_ds", "uio_ds.*"]),
    install_requires=[
        # torch is pinned by the installer (Makefile: the CPU build on CPU machines);
        # this range only refuses versions the code was never run with.
        "torch>=2.4",
        "transformers>=5.0,<6",
        "peft>=0.17",
        "deepspeed>=0.16",
        "datasets>=3.0",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "tensorboard>=2.15",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "gguf>=0.10",  # reading GGUF checkpoints (prepare-model)
        "sacrebleu>=2.4",  # BLEU-4 of auto-encoding, as published figures compute it
        "rouge-score>=0.1.2",  # ROUGE-L (auto-encoding, LongBench summaries)
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "scipy>=1.10"],
        "gpu": ["flash-attn>=2.5; sys_platform == \"linux\""],  # builds only against CUDA on Linux
    },
    entry_points={"console_scripts": ["uio-ds=uio_ds.cli:main"]},
)
