"""What a worker process needs loaded before its first step, imported once by the fork server (`parallel`).

Importing this module imports the experiment (NumPy, PyTorch, scratch, the reference), so every worker forked from
the server starts with them loaded instead of importing torch again. (The reference's update does not go through
`torch.optim.SGD.step`, which would also import `torch._dynamo` at the first step: see `reference.runner`.)
"""

from __future__ import annotations

import gc

import parity.lockstep.experiment  # noqa: F401  (loaded for the workers)
import reference  # noqa: F401  (torch: the experiment imports it only when it builds a run)

# What the imports made lives as long as a worker: frozen, no garbage collection in one looks at it again (a full
# collection over it took ~0.1 s of each run), nor writes to its pages (copy-on-write after the fork).
gc.freeze()
