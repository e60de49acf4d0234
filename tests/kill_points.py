"""Run ``run.py`` with a named point patched to stop there, so a test can SIGKILL the process
at that exact point (a fault injected by event, not by timing).

Usage: ``python tests/kill_points.py MODULE:QUALNAME@N MARKER [run.py arguments]``. After the
N-th call of ``MODULE.QUALNAME`` returns, MARKER is created and the process sleeps until it
is killed. The test waits for MARKER (:func:`wait_for_marker`), then kills the process.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
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


if __name__ == "__main__":
    # This checkout's package, not another installed copy (as python run.py would import).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install(sys.argv[1], Path(sys.argv[2]))
    from pyg_dhmrec.cli import main

    sys.exit(main(sys.argv[3:]))
