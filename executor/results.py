"""What a result says, from what the runner reported: the rules that need no container.

A run's status from its step, the top-level fields of a result from its runs (test cases or
the one run), the comparison of a case's stdout with what it expected, and the joining of a
result with the cases a fresh sandbox ran after the first one ended.
"""

from __future__ import annotations

from dataclasses import replace

from executor.models import CaseResult, Language, RunResult, Usage
from executor.protocol import Step

# A run that never started: the sandbox ended during an earlier one.
NOT_RUN = CaseResult(
    status="error",
    exit_code=None,
    signal=None,
    stdout="",
    stderr="[executor] not run: the sandbox ended during an earlier test case\n",
    stdout_truncated=False,
    stderr_truncated=False,
    duration_ms=0,
    usage=Usage(),
    passed=None,
)


def summarize(result: RunResult, runs: list[CaseResult], tests: bool) -> None:
    """Set the top-level fields of `result` from its runs (none after a failed build)."""
    if runs:
        # The first run that did not succeed speaks for them all, else the last one.
        first = next((run for run in runs if run.status != "success"), runs[-1])
        result.status = first.status
        result.exit_code, result.signal = first.exit_code, first.signal
        result.stdout, result.stderr = first.stdout, first.stderr
        result.stdout_truncated = first.stdout_truncated
        result.stderr_truncated = first.stderr_truncated
        result.duration_ms = sum(run.duration_ms for run in runs)
        result.usage = Usage(
            cpu_ms=sum(run.usage.cpu_ms for run in runs),
            memory_bytes=max(run.usage.memory_bytes for run in runs),
        )
    if tests:
        result.tests = runs
        result.passed = sum(run.passed is True for run in runs)
        result.failed = sum(run.passed is False for run in runs)


def resumed(first: RunResult, rest: RunResult) -> RunResult:
    """`first`, whose sandbox ended at case `first.resume_at`, with the cases from there on
    as a fresh sandbox ran them (`rest`): its runs, its files, its end."""
    at = first.resume_at
    if at is None or first.tests is None:
        return first
    if rest.tests is None or len(rest.tests) != len(first.tests) - at:
        return replace(first, resume_at=None)  # the rebuild failed: the rest stays not run
    merged = replace(
        first,
        files=rest.files,
        files_truncated=rest.files_truncated,
        finished_at=rest.finished_at,
        container_id=rest.container_id,
        resume_at=None if rest.resume_at is None else at + rest.resume_at,
    )
    summarize(merged, [*first.tests[:at], *rest.tests], True)
    return merged


def same_output(stdout: str, expected: str) -> bool:
    """Whether `stdout` is `expected`, trailing whitespace of each line and trailing empty
    lines aside."""

    def lines(text: str) -> list[str]:
        kept = [line.rstrip() for line in text.split("\n")]
        while kept and not kept[-1]:
            kept.pop()
        return kept

    return lines(stdout) == lines(expected)


def run_status(language: Language, step: Step, stderr: str) -> str:
    if step.timed_out:
        return "timeout"
    if step.oom or _runtime_out_of_memory(language, step, stderr):
        return "memory_limit"
    return "success" if step.exit_code == 0 else "error"


def _runtime_out_of_memory(language: Language, run: Step, stderr: str) -> bool:
    """The runtime's own heap limit (set from memory_mb) ended the program: it failed, and the
    end of its stderr carries the runtime's out-of-memory message."""
    if run.exit_code == 0 or not language.oom_markers:
        return False
    tail = stderr[-4096:]
    return any(marker in tail for marker in language.oom_markers)
