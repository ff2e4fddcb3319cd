"""Strict HTTP/1.1 for the proxy: request heads read strictly, response bodies relayed by framing.

Requests come from a client that may be hostile, so their heads are parsed strictly and anything
two HTTP readers could understand differently is refused: only HTTP/1.1, only origin-form
targets of visible ASCII, CRLF line ends, no line folding, no duplicate header, no
Transfer-Encoding (so no chunked body and no Content-Length beside it), a bounded request line
and head, and a head that arrives whole within a time limit from its first byte. The proxy
forwards a head of its own making, never the client's bytes (so never their Authorization).

Responses come from the engine and are parsed only as far as needed to know where each ends:
a length, chunks, the end of the connection, or a 101 after which the connection carries raw
bytes both ways.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote_to_bytes

CHUNK = 64 * 1024
REQUEST_LINE_MAX = 8 * 1024
HEAD_MAX = 32 * 1024
HEADERS_MAX = 64
RESPONSE_HEAD_MAX = 64 * 1024

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# Anchors: fullmatch on whatever a client sends (a `$` would let a trailing newline through).
# The engine's status line is matched at the start of its head and ends at an explicit CRLF.
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?)[ \t]*"
)
_DIGITS = re.compile(r"[0-9]{1,12}")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [^\r\n]*)?\r\n")
_FRAMING_FIELD = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:([^\r\n]*)", re.IGNORECASE
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?\r\n")
_QUERY_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_QUERY_VALUE = re.compile(r"(?:[A-Za-z0-9._~:@/!$'()*+,=-]|%[0-9A-Fa-f]{2})*")


class HTTPError(Exception):
    """A request the proxy will not read further: answer `status` and close the connection.

    `line` is the start of the request line when the head could not be read whole (for the
    audit line); never more, since the rest may hold a credential.
    """

    def __init__(self, status: int, reason: str, line: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.line = line


class QueryError(ValueError):
    """A query string that is not a plain, unambiguous list of distinct keys."""


class BrokenResponse(Exception):
    """The engine's answer ended early or cannot be framed."""


@dataclass(slots=True)
class Request:
    """One request head, parsed. Header names are lower case."""

    method: str
    target: str
    path: str
    query: str | None
    headers: dict[str, str]
    content_length: int
    close: bool
    upgrade: bool


def parse_request(head: bytes) -> Request:
    """Parse a request head (through its blank line) or raise HTTPError."""
    if len(head) > HEAD_MAX:
        raise HTTPError(431, f"request head larger than {HEAD_MAX} bytes")
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else [b""]
    first = lines[0]
    if len(first) > REQUEST_LINE_MAX:
        raise HTTPError(414, f"request line longer than {REQUEST_LINE_MAX} bytes")
    match = _REQUEST_LINE.fullmatch(first)
    if match is None:
        raise HTTPError(400, "malformed request line")
    if match.group(3, 4) != (b"1", b"1"):
        raise HTTPError(505, "only HTTP/1.1 is spoken here")
    target = match.group(2).decode("ascii")
    if not target.startswith("/"):
        raise HTTPError(400, "only origin-form request targets are accepted")
    if len(lines) - 1 > HEADERS_MAX:
        raise HTTPError(431, f"more than {HEADERS_MAX} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            raise HTTPError(400, "malformed header field")
        name = field.group(1).decode("ascii").lower()
        if name in headers:
            raise HTTPError(400, f"duplicate header field {name}")
        headers[name] = field.group(2).decode("ascii")
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            raise HTTPError(400, "Content-Length together with Transfer-Encoding")
        raise HTTPError(400, "chunked (Transfer-Encoding) request bodies are refused")
    length = headers.get("content-length")
    if length is not None and _DIGITS.fullmatch(length) is None:
        raise HTTPError(400, "malformed Content-Length")
    if "host" not in headers:
        raise HTTPError(400, "missing Host header")
    if "expect" in headers:
        raise HTTPError(417, "Expect is not supported")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    path, sep, query = target.partition("?")
    return Request(
        method=match.group(1).decode("ascii"),
        target=target,
        path=path,
        query=query if sep else None,
        headers=headers,
        content_length=int(length) if length is not None else 0,
        close="close" in tokens,
        upgrade="upgrade" in tokens and "upgrade" in headers,
    )


def parse_query(raw: str) -> dict[str, str]:
    """The keys and decoded values of a query string; every key at most once."""
    if not raw:
        raise QueryError("empty query string")
    result: dict[str, str] = {}
    for part in raw.split("&"):
        key, _, value = part.partition("=")
        if _QUERY_KEY.fullmatch(key) is None:
            raise QueryError(f"malformed query key {key[:40]!r}")
        if key in result:
            raise QueryError(f"duplicate query key {key!r}")
        if _QUERY_VALUE.fullmatch(value) is None:
            raise QueryError(f"malformed value for query key {key!r}")
        try:
            result[key] = unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(f"query key {key!r} is not UTF-8") from None
    return result


def error_response(
    status: int, message: str, *, close: bool, headers: tuple[str, ...] = ()
) -> bytes:
    """A Docker-style error answer: JSON {"message": ...}, as docker-py reads it.

    `headers` are extra header lines ("Name: value") of the proxy's own making.
    """
    body = json.dumps({"message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{line}\r\n" for line in headers)
        + f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


class Framing(Enum):
    """Where a response body ends."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # the body runs until the engine closes the connection
    UPGRADE = "upgrade"  # 101: raw bytes both ways from here


@dataclass(slots=True)
class Response:
    """One response head from the engine, as received, and how its body is framed."""

    status: int
    head: bytes
    framing: Framing
    length: int
    close: bool


def parse_response(head: bytes, *, method: str) -> Response:
    """Parse the engine's response head (through its blank line) or raise BrokenResponse.

    Only the fields that frame the body are read; the head goes to the client as received.
    """
    match = _STATUS_LINE.match(head)
    if match is None:
        raise BrokenResponse("malformed status line from the engine")
    status = int(match.group(2))
    fields: dict[bytes, bytes] = {}
    for raw_name, value in _FRAMING_FIELD.findall(head):
        name = raw_name.lower()
        if name in fields and name != b"connection":
            raise BrokenResponse(f"duplicate {name.decode()} from the engine")
        fields[name] = value.strip()
    tokens = {t.strip().lower() for t in fields.get(b"connection", b"").split(b",")}
    close = match.group(1) == b"0" or b"close" in tokens
    length = 0
    if status == 101:
        framing = Framing.UPGRADE
    elif 100 <= status < 200:
        raise BrokenResponse(f"unexpected interim response {status} from the engine")
    elif method == "HEAD" or status in (204, 304):
        framing = Framing.NONE
    elif b"transfer-encoding" in fields:
        if fields[b"transfer-encoding"].lower().rsplit(b",", 1)[-1].strip() != b"chunked":
            raise BrokenResponse("unsupported Transfer-Encoding from the engine")
        framing = Framing.CHUNKED
    elif b"content-length" in fields:
        raw = fields[b"content-length"].decode("latin-1")
        if _DIGITS.fullmatch(raw) is None:
            raise BrokenResponse("malformed Content-Length from the engine")
        framing, length = Framing.LENGTH, int(raw)
    else:
        framing, close = Framing.CLOSE, True
    return Response(status, head, framing, length, close)


async def read_head(
    reader: asyncio.StreamReader,
    *,
    idle_timeout: float | None = None,
    head_timeout: float | None = None,
) -> bytes:
    """Read one request head through its blank line; b"" when the client ends between requests.

    The first byte may take up to `idle_timeout` seconds: a connection idle that long is
    ended like one the client closed (b"", no answer: a client may have sent a request just
    as it closed). From its first byte the head must be whole within `head_timeout` seconds,
    or HTTPError 408. One timer serves both, moved once per request. Lines must end in CRLF:
    a bare LF is refused at once rather than waited past. Raises HTTPError for a malformed,
    oversize or late head.
    """
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []  # the lines read so far
    first = b""
    try:
        async with asyncio.timeout_at(
            None if idle_timeout is None else loop.time() + idle_timeout
        ) as timer:
            first = await reader.read(1)
            if not first:
                return b""
            timer.reschedule(None if head_timeout is None else loop.time() + head_timeout)
            return await _read_rest(reader, first, parts)
    except TimeoutError:
        if not parts and not first:
            return b""
        # Only the request line may be shown (in the audit): later lines may hold a credential.
        raise HTTPError(
            408,
            f"the request head did not arrive whole within {head_timeout:g}s",
            parts[0] if parts else b"",
        ) from None


async def _read_rest(reader: asyncio.StreamReader, first: bytes, parts: list[bytes]) -> bytes:
    try:
        line = first + await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "connection ended inside a request head") from None
    except asyncio.LimitOverrunError:
        raise HTTPError(414, f"request line longer than {REQUEST_LINE_MAX} bytes") from None
    if len(line) > REQUEST_LINE_MAX + 2:
        raise HTTPError(414, f"request line longer than {REQUEST_LINE_MAX} bytes")
    parts.append(line)
    total = len(line)
    try:
        while True:
            if not line.endswith(b"\r\n"):
                raise HTTPError(400, "lines must end in CRLF")
            if line == b"\r\n":
                if len(parts) == 1:
                    raise HTTPError(400, "empty line before the request line")
                return b"".join(parts)
            if len(parts) > HEADERS_MAX + 1:
                raise HTTPError(431, f"more than {HEADERS_MAX} header fields")
            line = await reader.readuntil(b"\n")
            total += len(line)
            if total > HEAD_MAX:
                raise HTTPError(431, f"request head larger than {HEAD_MAX} bytes")
            parts.append(line)
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "connection ended inside a request head") from None
    except asyncio.LimitOverrunError:
        raise HTTPError(431, f"request head larger than {HEAD_MAX} bytes") from None


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await src.read(min(n, CHUNK))
        if not data:
            raise BrokenResponse("the engine closed the connection inside a response body")
        dst.write(data)
        n -= len(data)
        await dst.drain()


async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter, response: Response) -> None:
    """Send `response` (head and body) to `dst` as it arrives, without holding whole bodies."""
    if response.framing is Framing.NONE:
        dst.write(response.head)
    elif response.framing is Framing.LENGTH:
        if response.length <= CHUNK:  # one write for the common small answer
            try:
                body = await src.readexactly(response.length)
            except asyncio.IncompleteReadError:
                raise BrokenResponse("the engine closed the connection inside a body") from None
            dst.write(response.head + body)
        else:
            dst.write(response.head)
            await _copy(src, dst, response.length)
    elif response.framing is Framing.CHUNKED:
        dst.write(response.head)
        await _relay_chunks(src, dst)
    else:  # CLOSE (UPGRADE is spliced by the caller)
        dst.write(response.head)
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    await dst.drain()


async def _chunk_size(src: asyncio.StreamReader) -> tuple[bytes, int]:
    try:
        line = await src.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise BrokenResponse("the engine's chunked body ended early or is malformed") from None
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise BrokenResponse("malformed chunk size line from the engine")
    return line, int(match.group(1), 16)


async def _trailers(src: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        try:
            line = await src.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise BrokenResponse("the engine's chunked body ended early") from None
        parts.append(line)
        if line == b"\r\n":
            return b"".join(parts)


async def _relay_chunks(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while True:
        line, size = await _chunk_size(src)
        if size == 0:
            dst.write(line + await _trailers(src))
            return
        dst.write(line)
        await _copy(src, dst, size + 2)  # the data and its CRLF


async def read_body(
    src: asyncio.StreamReader, response: Response, limit: int
) -> tuple[bytes, bytes]:
    """Read a whole (small) body: (the bytes as framed on the wire, the payload)."""
    try:
        if response.framing is Framing.NONE:
            return b"", b""
        if response.framing is Framing.LENGTH:
            if response.length > limit:
                raise BrokenResponse(f"the engine's answer is larger than {limit} bytes")
            body = await src.readexactly(response.length)
            return body, body
        if response.framing is Framing.CHUNKED:
            wire, payload = bytearray(), bytearray()
            while True:
                line, size = await _chunk_size(src)
                wire += line
                if size == 0:
                    wire += await _trailers(src)
                    return bytes(wire), bytes(payload)
                if len(wire) + size > limit:
                    raise BrokenResponse(f"the engine's answer is larger than {limit} bytes")
                data = await src.readexactly(size + 2)
                wire += data
                payload += data[:-2]
        body = await src.read(limit + 1)
        while len(body) <= limit and (more := await src.read(limit + 1 - len(body))):
            body += more
        if len(body) > limit:
            raise BrokenResponse(f"the engine's answer is larger than {limit} bytes")
        return body, body
    except asyncio.IncompleteReadError:
        raise BrokenResponse("the engine closed the connection inside a body") from None
