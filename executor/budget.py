"""How long one execution's sandbox may run: one rule for every clock that waits for it.

A request runs its program once, or once per test case, each run with the request's whole
timeout; a compiled language's build has its own time limit before them. The sandbox's
deadline, the HTTP wait, the worker's time-limit backstop, the broker's visibility timeout and
the reaper's age limit all count from here.
"""

from __future__ import annotations

MAX_TESTS = 64  # test cases in one request (the contract's bound)
# Per run beyond the first: the runner clears up after a run (kills and reaps what it left)
# and prepares the next one's stdin and pipes. Also what sending the files back may take.
RUN_OVERHEAD_S = 1.0


def run_seconds(timeout: float, runs: int = 1, build_s: float = 0.0, files: bool = False) -> float:
    """The longest the runs of one request may take: the build, each run its timeout."""
    runs = max(1, runs)
    return build_s + runs * timeout + (runs - 1 + int(files)) * RUN_OVERHEAD_S


def extra_seconds(timeout: float, runs: int) -> float:
    """What `runs` test cases may take beyond one timeout (0 for a single run)."""
    return run_seconds(timeout, runs) - run_seconds(timeout)
