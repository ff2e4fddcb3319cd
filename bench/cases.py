"""Test cases against separate requests: 50 cases of a C program in one POST /execute (one
build, one sandbox) against the same 50 inputs as 50 POST /execute (50 builds, 50 sandboxes),
side by side in one run, end to end through the stack."""

from __future__ import annotations

import time
from typing import Any

import requests

CASES = 50
PROGRAM = (
    '#include <stdio.h>\nint main(void) { long n; scanf("%ld", &n); printf("%ld\\n", n * n); }'
)


def _post(api: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{api}/execute", json=body, timeout=600)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def cases_table(api: str, image: str | None = None, rounds: int = 1) -> dict[str, float]:
    """Print the two paths' wall times and their ratio; return the figures (seconds)."""
    base: dict[str, Any] = {"code": PROGRAM, "language": "c", **({"image": image} if image else {})}
    cases = [{"stdin": str(n), "expected_stdout": str(n * n)} for n in range(CASES)]
    _post(api, {**base, "stdin": "1"})  # the image is at hand, the worker warm
    batched: list[float] = []
    separate: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        result = _post(api, {**base, "tests": cases})
        batched.append(time.perf_counter() - began)
        assert (result["status"], result["passed"]) == ("success", CASES), result["status"]
        began = time.perf_counter()
        for case in cases:
            one = _post(api, {**base, "stdin": case["stdin"]})
            assert one["stdout"] == case["expected_stdout"] + "\n", one["status"]
        separate.append(time.perf_counter() - began)
    one_request, many = min(batched), min(separate)
    print(f"\n## Test cases: {CASES} cases of a C program (best of {rounds})\n")
    print("| path | wall s |\n| --- | ---: |")
    print(f"| one request with {CASES} test cases | {one_request:.2f} |")
    print(f"| {CASES} separate requests, one after another | {many:.2f} |")
    print(f"\none request / {CASES} requests: {one_request / many:.3f}")
    return {"test_cases_one_request_s": one_request, "test_cases_separate_s": many}
