"""Reading a Server-Sent Events stream, for the CLI and the benchmark: standard library only.

`events(readline)` turns the lines of a response (an http.client response's `readline`, which
returns each line as soon as it has arrived) into `Event`s, per the SSE specification: fields
`id`, `event`, `data` (several `data` lines join with newlines), comments (`:`) skipped, an
event dispatched at each blank line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: str


def events(readline: Callable[[], bytes]) -> Iterator[Event]:
    """The events of a stream, each as soon as its blank line arrived, until the stream ends."""
    event_id, name = "", ""
    data: list[str] = []
    while True:
        line = readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                yield Event(event_id, name or "message", "\n".join(data))
            name, data = "", []
            continue
        if text.startswith(":"):
            continue
        field, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
