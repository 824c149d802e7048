"""A build step of the cuda image: fail when its torch is a CPU-only build (torch.version.cuda is None), which
would train on the CPU without a word. Exit status 1 with one paragraph, else print the CUDA version."""

import sys

import torch

if torch.version.cuda is None:
    sys.exit(f"error: the cuda image's torch {torch.__version__} is a CPU-only build (torch.version.cuda is None), "
             "so the image would train on the CPU. It came from docker/wheelhouse (OFFLINE=1) or from pip's "
             "configuration. Fetch the CUDA build on a Linux machine with PyPI: make docker-wheelhouse BACKEND=cuda "
             "(it refuses a wheelhouse without one), then make docker-build BACKEND=cuda OFFLINE=1 again.")
print(f"torch {torch.__version__} with CUDA {torch.version.cuda}")
