"""GET /executions: a page of the history, the caller's own executions only (with API keys)."""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any

from executor.errors import InvalidRequest
from executor.history import HistoryQuery, Position
from executor.web.auth import history_owner
from executor.web.context import Context

_FILTERS = ("status", "language", "worker")


def encode_cursor(position: Position) -> str:
    """An opaque cursor: where the next page starts (the last entry this page looked at)."""
    return base64.urlsafe_b64encode(f"{position.score!r} {position.id}".encode()).decode()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of encode_cursor() names; InvalidRequest (422) for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        score, _, execution_id = text.partition(" ")
        position = Position(float(score), execution_id)
    except (ValueError, binascii.Error, UnicodeError):
        position = None
    if position is None or not position.id or not math.isfinite(position.score):
        raise InvalidRequest(
            "cursor is not a `next` of this endpoint", errors={"cursor": ["Not a valid cursor."]}
        )
    return position


# created_at is written to the millisecond; `until` holds the whole of its millisecond, so an
# item's own created_at, as since and until, selects it.
_MILLISECOND = 0.000999


def _epoch(moment: datetime | None, *, end: bool = False) -> float | None:
    if moment is None:
        return None
    return moment.timestamp() + (_MILLISECOND if end else 0.0)


def page(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The answer to GET /executions for the query `args` (HistoryQuerySchema's)."""
    filters = {name: str(args[name]) for name in _FILTERS if args.get(name) is not None}
    owner = history_owner()
    if owner is not None:
        filters["owner"] = owner
    cursor = args.get("cursor")
    query = HistoryQuery(
        filters=filters,
        since=_epoch(args.get("since")),
        until=_epoch(args.get("until"), end=True),
        limit=int(args["limit"]),
        after=decode_cursor(cursor) if cursor else None,
    )
    found = ctx.store.history(query)
    return {
        "items": found.items,
        "next": encode_cursor(found.next) if found.next is not None else None,
    }
