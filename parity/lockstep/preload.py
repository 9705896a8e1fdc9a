"""What a worker process needs loaded before its first step, imported once by the fork server (`parallel`).

Importing this module imports the experiment (NumPy, PyTorch, scratch, the reference) and builds one throwaway
`torch.optim.SGD`: PyTorch's optimizers import its compiler stack (`torch._dynamo`, about as long to import as torch
itself) when the first one is built. Done here, every worker forked from the server starts with it loaded instead
of importing it again.
"""

from __future__ import annotations

import torch

import parity.lockstep.experiment  # noqa: F401  (loaded for the workers)

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
