"""Independent lockstep experiments run side by side in worker processes, with one progress count.

Each experiment is deterministic (seeded data order and weights, CPU PyTorch on one thread), so a run's
result does not depend on which process ran it: the report is the same with any number of jobs (a test shows it).
Workers come from a fork server that has imported NumPy, PyTorch and the experiment once (`parity.lockstep.preload`),
so starting one costs a fork, not an import of torch. `start_fork_server` starts that server early, so its imports
overlap the caller's own start-up; this module imports neither torch nor the experiment until it runs one itself.
A worker ends as soon as the process that started it does, however that ended (a `kill` of `cnn-parity report`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from parity.lockstep.experiment import ExperimentConfig, ExperimentResult
    from scratch.data import Dataset

T = TypeVar("T")
PROGRESS_EVERY = 50  # steps between a worker's progress messages: often enough to read, rarely enough to be free
_progress: multiprocessing.Queue | None = None  # a worker's end of the progress queue
_preload = "parity.lockstep.preload"  # what the fork server imports (`start_fork_server`)


def default_jobs() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def start_fork_server(preload: str | None = None) -> None:
    """Start the fork server the workers come from, now: it imports `preload` (the experiment, and whatever else the
    caller's tasks need; by default what was asked last, else `parity.lockstep.preload`) while the caller goes on
    (run_experiments waits for it when it needs a worker). A no-op while one runs."""
    global _preload
    _preload = preload or _preload
    multiprocessing.get_context("forkserver").set_forkserver_preload([_preload])  # also for one started again
    with _ctrl_c_ignored():
        multiprocessing.forkserver.ensure_running()


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored while the fork server is started: a process starts with a signal ignored that its parent
    ignored, so the server (and the workers it forks) never raise KeyboardInterrupt. Ctrl-C is the caller's to
    handle (it ends the workers); the server, busy importing torch for a second or more, would otherwise print a
    traceback of its own under the caller's one line. (A Ctrl-C in the few milliseconds of the start is lost.) Only
    the main thread may set a handler: a server started from another thread (an in-process caller's) keeps SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def longest_first(configs: Sequence[ExperimentConfig]) -> list[int]:
    """The order to hand experiments to workers: the longest first, so no worker is left with a long one at the end.

    A run that diverges (a demonstration: not PyTorch's semantics) takes longest: every layer is run alone at every
    step compared in full, where a run that agrees runs its conv and dense layers alone only now and then
    (parity.lockstep.local).
    """
    return sorted(range(len(configs)), key=lambda index: configs[index].expects_parity)


def run_experiments(
    configs: Sequence[ExperimentConfig],
    train: Dataset,
    test: Dataset,
    jobs: int,
    on_steps: Callable[[ExperimentConfig, int], None] | None = None,
    then: Sequence[Callable[[ExperimentResult], T]] = (),
    then_here: Sequence[int] = (),
) -> tuple[list[ExperimentResult], list[list[T]]]:
    """Every experiment, in the order given; `jobs` > 1 runs them in that many worker processes. `on_steps(config,
    n)` is told as each experiment makes progress (every step in process, every PROGRESS_EVERY steps in a worker).
    Each function of `then` (module-level, or a partial of one) is a task of its own after each experiment, run by
    whichever worker is free first, for work that can be done side by side too (the report's plots: the last run's
    are then drawn by every worker at once). `then_here`: positions in `then` of tasks that, of the experiment that
    finishes last, this process runs itself while the workers take the others: it has nothing left to do but wait by
    then (the report's costliest plot, with matplotlib warmed up here while the workers started). They must not need
    torch: where workers make the runs, this process never imports it. (Run serially, every task runs here anyway.)
    For each experiment, in order, the list of their values. An error in a worker is raised here as it was raised
    there."""
    report = on_steps or (lambda config, steps: None)
    if jobs <= 1 or len(configs) <= 1:
        from parity.lockstep.experiment import run_experiment
        from parity.threads import one_thread_each

        results = []
        with one_thread_each():  # as in a worker (`_start_worker`), the tasks too: see parity.threads
            for config in configs:
                results.append(run_experiment(config, train, test, on_step=lambda _step, c=config: report(c, 1)))
            return results, [[task(result) for task in then] for result in results]
    start_fork_server()  # a no-op when already started; else with the preload asked for last
    context = multiprocessing.get_context("forkserver")
    progress = context.Queue()
    workers = min(jobs, len(configs))
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(progress, os.getpid())) as pool:
        try:  # a submit starts a worker, waiting for the fork server (still importing torch at first)
            runs = {pool.submit(_run_in_worker, i, configs[i], train, test): i for i in longest_first(configs)}
            extras = _follow(pool, runs, then, then_here, progress, configs, report)
        except BaseException:  # Ctrl-C, or an error here: the runs are not waited for
            _stop(pool)
            raise
        for future in [*runs, *extras.values()]:  # the error itself, not the cancellation of the tasks after it
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()
        results = {index: future.result() for future, index in runs.items()}
        values = [[extras[index, task].result() for task in range(len(then))] for index in range(len(configs))]
    return [results[index] for index in range(len(configs))], values


def _follow(
    pool, runs: dict[Future, int], then, then_here, progress, configs: Sequence[ExperimentConfig], report
) -> dict:
    """Pass the workers' progress on until every experiment and its `then` tasks are done; each is handed to
    whichever worker is free first (a worker done with its run would otherwise idle while another draws plots),
    but for the `then_here` ones of the experiment that finishes last, run here. A worker's error surfaces from
    `result()`; one here is raised. Returns the tasks by (experiment index, position in `then`)."""
    extras: dict[tuple[int, int], Future] = {}
    pending = set(runs)
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        _drain(progress, configs, report)
        if any(future.exception() is not None for future in done):
            for future in pending:
                future.cancel()
            return extras
        finished = [future for future in done if future in runs]
        # The run that finished last (of two finishing at once, one), once no other is still running.
        last = finished[-1] if finished and not any(future in runs for future in pending) else None
        for future in finished:
            for position, task in enumerate(then):
                if future is not last or position not in then_here:
                    extras[runs[future], position] = pool.submit(task, future.result())
                    pending.add(extras[runs[future], position])
        for position in then_here if last is not None else ():  # once the workers have every other task
            extras[runs[last], position] = _run_here(then[position], last.result())
    _drain(progress, configs, report)
    return extras


def _run_here(task: Callable[[ExperimentResult], T], result: ExperimentResult) -> Future:
    """`task(result)` run in this process, as a done Future beside the workers' (its error is raised, not kept)."""
    future: Future = Future()
    future.set_result(task(result))
    return future


def _drain(progress, configs: Sequence[ExperimentConfig], report) -> None:
    while True:
        try:
            index, steps = progress.get_nowait()
        except queue.Empty:
            return
        report(configs[index], steps)


def _stop(pool: ProcessPoolExecutor) -> None:
    """End the workers now, whatever they are doing, and the fork server. Leaving the pool's block would wait for
    every run to finish, or for ever: a worker writing a result that no one reads any more blocks the pool's own
    shut-down. A server still busy importing would, once done, fork the workers asked of it, which then fail to read
    this process's queue (gone by then), each with a traceback of its own."""
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in multiprocessing.active_children():  # this process's own: the pool's workers
        worker.terminate()
    _stop_fork_server()


def _stop_fork_server() -> None:
    """Kill the fork server and forget it, so the next run starts a new one. multiprocessing keeps its pid, socket
    and pipe, and (Python 3.11) finds it gone only once it can reap it: a run right after the kill would connect to
    the dying server and fail. `ForkServer._stop` is the reaping and forgetting its own tests use (not public: may
    go)."""
    server = multiprocessing.forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # it holds no state of ours: each worker is a process of its own
    stop = getattr(server, "_stop", None)
    if stop is not None:
        stop()


def _start_worker(progress, caller: int) -> None:
    global _progress
    _progress = progress
    # Ctrl-C is the caller's to handle (it ends the workers): a worker's KeyboardInterrupt would only print a
    # traceback of its own, and break the pool while the caller is still reading from it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(caller,), name="exit with the caller", daemon=True).start()
    from parity.threads import one_thread_each_from_now

    one_thread_each_from_now()  # as the serial run (torch's and NumPy's BLAS): see parity.threads


def _exit_with(caller: int) -> None:
    """End this worker once the process that runs the experiments has ended, however it ended. A SIGTERM or SIGKILL
    there runs none of its clean-up, and a worker waiting for its next task holds a write end of that queue itself:
    it would wait forever, and the fork server with it (it lives while any worker does)."""
    try:
        ended = os.pidfd_open(caller)  # readable once the process has ended (Linux 5.3 on)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: ask every half second instead
        while _alive(caller):
            time.sleep(0.5)
        os._exit(1)
    watch = select.poll()  # not select.select, which refuses a descriptor past 1023
    watch.register(ended, select.POLLIN)
    watch.poll()
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user (a pid taken again)
        return True
    return True


def _run_in_worker(index: int, config: ExperimentConfig, train: Dataset, test: Dataset) -> ExperimentResult:
    counted = [0]

    def on_step(_step) -> None:
        counted[0] += 1
        if counted[0] == PROGRESS_EVERY:
            _progress.put((index, counted[0]))
            counted[0] = 0

    from parity.lockstep.experiment import run_experiment

    result = run_experiment(config, train, test, on_step=on_step)
    _progress.put((index, counted[0]))
    return result
