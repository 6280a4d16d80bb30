"""Fail the install when a machine without an NVIDIA GPU ended up with CUDA packages.

A bare `torch` requirement (ours or a dependency's) resolves to the CUDA build and several GB of
nvidia-* wheels; the Makefile installs the CPU build first so that this never happens.
"""

import importlib.metadata as md
import shutil
import sys

import torch

has_gpu = shutil.which("nvidia-smi") is not None
cuda_pkgs = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("nvidia-"))
print(f"torch {torch.__version__} (cuda build: {torch.version.cuda or 'no'}), GPU present: {has_gpu}")
if not has_gpu and (torch.version.cuda or cuda_pkgs):
    sys.exit(
        "rlvr install: this machine has no NVIDIA GPU but a CUDA torch build or CUDA packages were "
        f"installed ({', '.join(cuda_pkgs[:5])}...). Remove .venv and run make again; install "
        "torch==2.13.0 (CPU wheel) before anything else."
    )
