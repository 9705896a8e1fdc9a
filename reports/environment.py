"""What a report was run on: interpreter, libraries, BLAS, threads, device, and the project's git commit.

Everything here is best effort: a missing library or git yields "unknown", never an exception, so a report can
always be written. torch is imported only if it is already loaded or importable (`compare-golden` runs without it).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"


def collect(
    dtypes: list[str] | None = None, seeds: list[int] | None = None, runs: dict[str, object] | None = None
) -> dict[str, object]:
    """The environment of this process, as plain JSON-able values (insertion order = display order); `runs`: the
    threads and PyTorch of the process the runs were made in (`run_environment`), when that was another one."""
    runs = runs or run_environment()
    env: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "numpy_blas_threads": runs["numpy_blas_threads"],
        "numpy_blas_kernel": numpy_blas_kernel(),
    }
    env.update({key: value for key, value in runs.items() if key != "numpy_blas_threads"})
    env["cpu_count"] = os.cpu_count() or 0
    if dtypes is not None:
        env["dtypes"] = list(dtypes)
    if seeds is not None:
        env["seeds"] = list(seeds)
    env["git_commit"] = git_commit()
    env["generated_at"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return env


def run_environment(_result: object = None) -> dict[str, object]:
    """NumPy's BLAS threads and PyTorch's environment in this process: where a report's worker made `_result`,
    what the run ran under (the report's own process, which only writes it, never imports torch)."""
    return {"numpy_blas_threads": numpy_blas_threads(), **torch_environment()}


def numpy_blas() -> str:
    """NumPy's BLAS library and version, from its build configuration."""
    try:
        config = np.show_config(mode="dicts")  # NumPy >= 1.26
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', UNKNOWN)} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy or an unusual build: say so rather than fail the report
        return UNKNOWN


def numpy_blas_kernel() -> str:
    """The CPU kernel NumPy's own OpenBLAS runs (e.g. `Haswell`), from threadpoolctl: it decides the last bits of a
    float32 conv, hence how many near-tie flips a float32 run sees. OPENBLAS_CORETYPE overrides it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return UNKNOWN
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__)) + os.sep + "numpy"
    for info in threadpool_info():  # the BLAS loaded from NumPy's own wheel, not torch's
        if info.get("user_api") == "blas" and info.get("filepath", "").startswith(numpy_dir):
            return str(info.get("architecture") or UNKNOWN)
    return UNKNOWN


def numpy_blas_threads() -> int | str:
    """Threads NumPy's BLAS may use: from threadpoolctl when installed, else the usual environment variables."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            if os.environ.get(name):
                return f"{os.environ[name]} ({name})"
        return UNKNOWN
    counts = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(counts) if counts else UNKNOWN


def torch_environment() -> dict[str, object]:
    """PyTorch's version, BLAS, intra-op threads, and device; TF32 flags when a GPU is present."""
    try:
        import torch
    except ImportError:
        return {"torch": "not installed"}
    env: dict[str, object] = {
        "torch": str(torch.__version__),  # a str subclass of torch's own: unpickling it would import torch
        "torch_blas": _torch_blas(torch),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    if torch.cuda.is_available():  # the twin runs on the CPU; record the GPU's settings for completeness
        env["gpu"] = torch.cuda.get_device_name(0)
        env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        env["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return env


def _torch_blas(torch) -> str:
    try:
        config = torch.__config__.show()
    except Exception:  # noqa: BLE001
        return UNKNOWN
    match = re.search(r"BLAS_INFO=([^,\s]+)", config)
    return match.group(1) if match else UNKNOWN


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """`<sha>` of HEAD, with `+dirty` when tracked files differ from it; "unknown" outside a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return sha + ("+dirty" if dirty else "")
