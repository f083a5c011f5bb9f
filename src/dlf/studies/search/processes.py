"""Process supervision of a study: its workers as processes that share the storage, die with
their parent, release their trials when interrupted, and report their failures as one error."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

from dlf.engine.interrupts import terminate_as_interrupt
from dlf.errors import DlfError
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.study import Worker
from dlf.threads import ThreadChoice
from dlf.threads import apply as apply_threads
from dlf.threads import current as current_threads

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 1.0


def _die_with_parent(parent: int) -> None:
    """Make this worker get SIGTERM (handled as Ctrl-C: release the trials, exit) as soon as
    its parent is gone, even killed with SIGKILL: through the kernel on Linux
    (``prctl(PR_SET_PDEATHSIG)``), and on every system from a thread that polls the parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no libc prctl: a thread watches instead
            armed = False
        if armed:
            if os.getppid() != parent:  # it died before the kernel was told
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dlf-parent-watch", daemon=True).start()


def _work(config: StudyConfig, index: int, threads: ThreadChoice, parent: int) -> None:
    """Entry point of a worker process. Interrupted, or once its parent is gone, it releases
    its trials for a retry and exits."""
    apply_threads(threads)
    with terminate_as_interrupt():
        try:
            _die_with_parent(parent)
            Worker(config, index, keep_going=lambda: os.getppid() == parent).run()
        except KeyboardInterrupt:
            sys.exit(130)
        except DlfError as exc:  # one line, as the command line prints it (e.g. disk full)
            print(f"dlf-study: error: [worker {index}] {exc}", file=sys.stderr, flush=True)
            sys.exit(exc.exit_code)


def run_workers(config: StudyConfig, workers: int) -> None:
    """Run the job loop here (one worker) or in ``workers`` processes sharing the storage.

    Interrupting the parent (Ctrl-C, SIGTERM) interrupts its workers, which release their
    trials for a retry, and the study's results are written; a parent killed outright (kill -9)
    takes its workers with it: they release their trials and exit. ``workers`` (≥ 1) was
    checked by :func:`~dlf.studies.search.study.check_study` before the storage was opened."""
    with terminate_as_interrupt():
        if workers == 1:
            Worker(config, 0, config.run.output.wants_progress()).run()
            return
        command = current_threads()  # the command's choice, shared among its workers
        threads = ThreadChoice(
            max(1, command.threads // workers), f"1/{workers} of the command's ({command.reason})"
        )
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(
                target=_work, args=(config, i + 1, threads, os.getpid()), name=f"dlf-worker-{i + 1}"
            )
            for i in range(workers)
        ]
        try:
            for process in processes:
                process.start()
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: the worker releases its trials
            for process in processes:
                process.join()
            raise
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        raise WorkersFailed(failed)


class WorkersFailed(DlfError):
    """Worker processes ended with errors, each having printed its own line. The command
    exits with their code where they agree (2 for a full disk), else (or killed) 1."""

    def __init__(self, failed: Sequence[BaseProcess]) -> None:
        codes = {p.exitcode for p in failed}
        agreed = codes.pop() if len(codes) == 1 else None
        self.exit_code = agreed if agreed is not None and agreed > 0 else 1
        names = ", ".join(p.name for p in failed)
        super().__init__(f"worker processes failed: {names} (see their messages above)")
