"""`python -m executor`: run a file through the API, or show the service's status.

    python -m executor run FILE [--language L] [--stdin FILE] [--timeout S] [--stream] [--api URL]
    python -m executor status [--api URL]

`run` writes the program's stdout and stderr to its own and exits with the program's exit
code, so it composes like running the program locally; with `--stream` it writes the output
as the program writes it (the API's live events), resuming the stream if it breaks. Where
the program did not exit by itself: a timeout exits 124 (as timeout(1) does), a memory kill
137, death by a signal 128 + its number, a failed build 1 (with the compiler's output on
stderr). The CLI's own failures (the API unreachable, an answer with an error) print one
line naming the cause and exit 2. The API is `--api`, else EXECUTOR_API (default
http://127.0.0.1:8083); a key, when the service asks for one, is EXECUTOR_API_KEY. Standard
library only: it runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from executor import sse

DEFAULT_API = "http://127.0.0.1:8083"
EXIT_TROUBLE = 2  # the CLI could not get a result
EXIT_TIMEOUT = 124
EXIT_MEMORY = 137
POLL_S = 0.5
STREAM_READ_TIMEOUT_S = 120  # far above the API's keep-alive interval
STREAM_RESUMES = 5  # reconnections (with Last-Event-ID) before giving up

# The language of a file, by its extension (the names of GET /languages).
EXTENSIONS = {
    ".py": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".sh": "bash",
    ".bash": "bash",
    ".c": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".go": "go",
    ".java": "java",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
}


class Trouble(Exception):
    """The CLI cannot give a result; the message names the cause."""


class Client:
    """The few calls the CLI makes, over urllib."""

    def __init__(self, base: str, key: str | None) -> None:
        if not base.startswith(("http://", "https://")):
            raise Trouble(f"the API's URL must start with http:// or https://, got {base!r}")
        self.base = base.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.base}{path}"  # http(s) only, checked in __init__
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            raise Trouble(f"{method} {path}: HTTP {e.code}: {_message(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Trouble(f"cannot reach the API at {self.base}: {reason}") from None
        except ValueError:
            raise Trouble(f"{method} {path}: the answer is not JSON") from None

    def stream(self, method: str, path: str, body: Any = None, after: str = "") -> Any:
        """An open event-stream response (http.client's, read line by line as it arrives)."""
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.base}{path}"  # http(s) only, checked in __init__
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "text/event-stream")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if after:
            request.add_header("Last-Event-ID", after)
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            return urllib.request.urlopen(request, timeout=STREAM_READ_TIMEOUT_S)  # noqa: S310
        except urllib.error.HTTPError as e:
            raise Trouble(f"{method} {path}: HTTP {e.code}: {_message(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Trouble(f"cannot reach the API at {self.base}: {reason}") from None


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace") or "(no body)"
    if isinstance(body, dict):
        message = str(body.get("message") or body)
        if isinstance(body.get("errors"), dict):
            message += " " + json.dumps(body["errors"], sort_keys=True)
        return message
    return str(body)


def language_of(path: Path, given: str | None) -> str:
    if given:
        return given
    language = EXTENSIONS.get(path.suffix.lower())
    if language is None:
        raise Trouble(f"cannot tell the language of {path.name}: name it with --language")
    return language


def exit_code_of(result: dict[str, Any]) -> int:
    """The exit code `run` ends with, as if the program had run here."""
    status = result.get("status")
    if status == "internal_error":
        raise Trouble(f"the service could not run it: {result.get('message')}")
    if status == "timeout":
        return EXIT_TIMEOUT
    if status == "memory_limit":
        return EXIT_MEMORY
    if status == "compile_error":
        return 1
    if isinstance(result.get("exit_code"), int):
        return int(result["exit_code"])
    name = result.get("signal")
    if isinstance(name, str):
        try:
            return 128 + int(signal.Signals[name])
        except KeyError:
            pass
    return 1


def run(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = path.read_text(encoding="utf-8")
        stdin = Path(args.stdin).read_text(encoding="utf-8") if args.stdin else ""
    except (OSError, UnicodeDecodeError) as e:
        raise Trouble(
            f"cannot read {e.filename if isinstance(e, OSError) else path}: {e}"
        ) from None
    body: dict[str, Any] = {"code": code, "language": language_of(path, args.language)}
    if stdin:
        body["stdin"] = stdin
    if args.timeout is not None:
        body["timeout"] = args.timeout
    if args.stream:
        return exit_code_of(streamed(client, body))
    wait = (args.timeout or 60) + 60
    status, result = client.call("POST", "/execute", body, timeout=wait)
    while status == 202:  # still queued or running: the result comes at its own address
        time.sleep(POLL_S)
        status, result = client.call("GET", f"/executions/{result['id']}", timeout=30)
    compile_step = result.get("compile") or {}
    sys.stdout.write(result.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(compile_step.get("stderr") or "")
    sys.stderr.write(result.get("stderr", ""))
    sys.stderr.flush()
    return exit_code_of(result)


def streamed(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    """Run `body` with live output: write stdout and stderr as they arrive; the result."""
    response = client.stream("POST", "/execute", body)
    location = response.headers.get("Location") or ""
    after = ""
    for _ in range(STREAM_RESUMES + 1):
        try:
            with response:
                for event in sse.events(response.readline):
                    after = event.id or after
                    if event.event in ("stdout", "stderr"):
                        out = sys.stdout if event.event == "stdout" else sys.stderr
                        out.write(json.loads(event.data).get("data", ""))
                        out.flush()
                    elif event.event == "result":
                        result: dict[str, Any] = json.loads(event.data)
                        build = result.get("compile") or {}
                        sys.stderr.write(build.get("stderr") or "")  # not streamed
                        sys.stderr.flush()
                        return result
        except (OSError, ValueError):
            pass  # the connection broke: resume after the last event
        if not location:
            break
        response = client.stream("GET", f"{location}/events", after=after)
    raise Trouble("the event stream ended before the result")


def status(client: Client, args: argparse.Namespace) -> int:
    _, info = client.call("GET", "/status")
    out = sys.stdout
    out.write(f"instance {info.get('instance')}  version {info.get('version')}  ")
    out.write(f"up {info.get('uptime_s', 0):.0f}s\n")
    queue, pool = info.get("queue") or {}, info.get("pool") or {}
    out.write(f"queue depth {queue.get('depth')}  warm containers {pool.get('warm')}\n")
    workers = info.get("workers") or []
    out.write(f"workers ({len(workers)}):\n")
    for worker in workers:
        out.write(
            f"  {worker.get('name')}  active {worker.get('active')}"
            f"  processed {worker.get('processed')}\n"
        )
    recent = info.get("recent") or []
    out.write(f"recent executions ({len(recent)}):\n")
    for item in recent[: args.recent]:
        out.write(
            f"  {item.get('id')}  {item.get('status', ''):<14} {item.get('language') or ''}"
            f"  {item.get('duration_ms', '')} ms\n"
        )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m executor", description=__doc__.splitlines()[0])
    top.add_argument("--api", default=os.environ.get("EXECUTOR_API", DEFAULT_API))
    commands = top.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="run a file and exit with its exit code")
    one.add_argument("file")
    one.add_argument("--language", "-l", help="default: guessed from the file's extension")
    one.add_argument("--stdin", help="a file whose text is the program's stdin")
    one.add_argument("--timeout", type=float, help="seconds (the service's default otherwise)")
    one.add_argument(
        "--stream", action="store_true", help="write the output as the program writes it"
    )
    one.add_argument("--api", default=argparse.SUPPRESS, help="the API's base URL")
    st = commands.add_parser("status", help="workers, queue, pool and recent executions")
    st.add_argument("--recent", type=int, default=10, help="how many recent executions")
    st.add_argument("--api", default=argparse.SUPPRESS, help="the API's base URL")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        client = Client(args.api, os.environ.get("EXECUTOR_API_KEY"))
        return run(client, args) if args.command == "run" else status(client, args)
    except Trouble as e:
        print(f"executor: {e}", file=sys.stderr)
        return EXIT_TROUBLE
    except KeyboardInterrupt:
        return 130
