"""Run ``run.py`` with a named point patched to stop there, so a test can SIGKILL the process
at that exact point (a fault injected by event, not by timing).

Usage: ``python tests/kill_points.py MODULE:QUALNAME@N MARKER [run.py arguments]``. After the
N-th call of ``MODULE.QUALNAME`` returns, MARKER is created and the process sleeps until it
is killed. The test waits for MARKER (:func:`wait_for_marker`), then kills the process;
:func:`stopped_at` does both around a ``with`` block.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def install(point: str, marker: Path) -> None:
    """Patch ``module:Class.method@N`` (or ``module:function@N``) to stop after its N-th call."""
    target, _, count = point.partition("@")
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = {"n": 0}
    stop_after = int(count or 1)

    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == stop_after:
            marker.touch()
            while True:  # wait here for the test's SIGKILL
                time.sleep(1)
        return result

    setattr(owner, name, patched)


def wait_for_marker(marker: Path, proc: subprocess.Popen, hang_guard_s: float = 900) -> None:
    """Return once ``marker`` exists; fail if ``proc`` ends first (the point was never
    reached). ``hang_guard_s`` only stops a hung test, it is no timing expectation."""
    start = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) before the kill point")
        if time.monotonic() - start > hang_guard_s:
            raise AssertionError(f"kill point not reached; the process hangs ({marker})")
        time.sleep(0.02)


@contextlib.contextmanager
def stopped_at(point: str, marker: Path, args: Sequence[str]) -> Iterator[subprocess.Popen]:
    """A process running ``run.py args`` that has reached ``point`` (``MODULE:QUALNAME@N``),
    SIGKILLed when the block ends. It runs with this process's thread count: 1 and 2 threads
    round sums differently, and a resumed run is compared with this process's runs."""
    import torch

    here = Path(__file__).resolve()
    cmd = [sys.executable, str(here), point, str(marker), *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, cwd=here.parent.parent, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_marker(marker, proc)
        yield proc
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup, as a crash
        proc.wait()


if __name__ == "__main__":
    # This checkout's package, not another installed copy (as python run.py would import).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install(sys.argv[1], Path(sys.argv[2]))
    from pyg_dhmrec.cli import main

    sys.exit(main(sys.argv[3:]))
