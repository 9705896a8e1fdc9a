"""One thread each for PyTorch and NumPy's BLAS while the two sides run: the lockstep's steps are small, so more
threads mostly add synchronisation (and, in worker processes side by side, oversubscribe the cores: a deep spec at
batch 32 ran 2x slower with two jobs of two BLAS threads on two idle cores, 10x on busy ones), and a fixed count
keeps each library's reductions in one order from run to run and machine to machine (float32 results moved with
NumPy's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def one_thread_each() -> Iterator[None]:
    """Torch and NumPy's BLAS on one thread each inside the block, as they were after it (in-process callers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    blas = _one_blas_thread()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        blas.restore_original_limits()


def _one_blas_thread() -> threadpool_limits:
    """NumPy's BLAS limited to one thread until the result's `restore_original_limits()`."""
    return threadpool_limits(limits=1, user_api="blas")


def one_thread_each_from_now() -> None:
    """Torch and NumPy's BLAS on one thread each for the rest of the process (a worker's)."""
    import torch

    torch.set_num_threads(1)
    _one_blas_thread()
