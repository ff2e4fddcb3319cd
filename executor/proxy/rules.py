"""What the proxy lets through: a method and path table, and what each entry's query may hold.

Before this table is consulted, every request must authenticate (rule "auth", in the server):
`Authorization: Executor <identity> <hex HMAC-SHA256(secret, identity)>` (executor.proxyauth),
on every path below, the pings included. Without a valid credential the answer is 401 and
nothing here is looked at; the header is never forwarded to the engine.

Paths are matched on the raw request target, before any decoding, with patterns that must
match the whole path (fullmatch, never a `$` anchor, which a trailing newline passes); a
path must be canonical (no percent-encoding, no empty or dot segment) and versioned
(/v1.NN/..., NN at least MIN_API_MINOR). Containers are named by full 64-hex id only; whether
an id is ours is decided by `ownership`, and a create body by `executor.policy.check_create`
(in the server, which has the body). Everything not in ROUTES is refused.

    rule               method       path (after /v1.NN)          query
    ping               GET HEAD     /_ping (also unversioned)     none
    version            GET          /version (also unversioned)   none
    container-create   POST         /containers/create            name=executor-[a-z0-9-]{1,64}
      body: check_create, worker label = the client's identity; uid free (else 409)
    container-list     GET          /containers/json              filters with our label; all,
                                                                  limit, size=0, trunc_cmd
    container-start    POST         /containers/{id}/start        none
      only by the container's creator
    container-attach   POST         /containers/{id}/attach       stdin stdout stderr stream logs
      only by the container's creator, and only once
    container-wait     POST         /containers/{id}/wait         condition
    container-kill     POST         /containers/{id}/kill         signal
    container-inspect  GET          /containers/{id}/json         none
    container-stats    GET          /containers/{id}/stats        stream=0 (required), one-shot
    container-remove   DELETE       /containers/{id}              v, force, link=false
    image-inspect      GET          /images/{name}/json           none; name an allowed image
    image-pull         POST         /images/create                fromImage + tag: allowed image

Creator: the identity whose create the proxy saw return the container (ownership.py). A
container the proxy did not see created (made before it started, or elsewhere) has no creator
and can never be started or attached. Wait, kill, inspect, stats and remove are open to every
authenticated worker on any container of ours: a worker's reaper removes the containers of
workers that died.

Uid: the create's Cmd must be [uid], the uid its program runs as, in EXECUTOR_SANDBOX_UIDS
(check_create),
and no container of ours that is not yet removed may run as it (nor may another create in
flight ask for it): else 409, naming the uid, and the worker draws another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from executor.policy import SANDBOX_LABEL_FILTER, Rules
from executor.proxy import strictjson
from executor.proxy.http import QueryError, parse_query

MIN_API_MINOR = 40  # /v1.40 and later; older versions change what bodies and paths mean
CREATE_NAME = re.compile(r"executor-[a-z0-9-]{1,64}")
LIST_FILTERS = frozenset({"label", "status", "id", "name", "exited"})
WAIT_CONDITIONS = frozenset({"not-running", "next-exit", "removed"})
TRUE = frozenset({"1", "true", "True"})
FALSE = frozenset({"0", "false", "False"})
BOOLEAN = TRUE | FALSE

_CANONICAL = re.compile(r"(?:/[A-Za-z0-9_:-][A-Za-z0-9._:-]*)+")
_VERSIONED = re.compile(r"/v1\.([1-9][0-9])(/.*)")
_ID = r"(?P<id>[0-9a-f]{64})"
_SIGNAL = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+-]{0,15}|[1-9][0-9]?")
_INT = re.compile(r"-?[0-9]{1,6}")

Params = dict[str, str]
Check = Callable[[Params, "re.Match[str]", Rules], str]  # a reason to refuse, or ""


@dataclass(frozen=True)
class Route:
    """One allowed endpoint: a rule name, methods, an anchored path pattern, a query check."""

    rule: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    check: Check
    body: bool = False  # only the create takes a body
    upgrade: bool = False  # only the attach is hijacked
    unversioned: bool = False


@dataclass(frozen=True)
class Decision:
    """The router's answer; `reason` is empty when the request may go on."""

    rule: str
    reason: str = ""
    route: Route | None = None
    container: str | None = None
    image: str | None = None
    version: str = ""

    @property
    def allowed(self) -> bool:
        return not self.reason


def normalize_image(name: str) -> str:
    """`name` with its tag made explicit (Docker's default tag is latest)."""
    if "@" in name or ":" in name.rsplit("/", 1)[-1]:
        return name
    return f"{name}:latest"


def _keys(params: Params, allowed: frozenset[str] | set[str]) -> str:
    extra = sorted(set(params) - allowed)
    return f"query key {extra[0]!r} is not allowed here" if extra else ""


def _no_query(params: Params, match: re.Match[str], rules: Rules) -> str:
    return "this endpoint takes no query" if params else ""


def _booleans(*names: str) -> Check:
    allowed = frozenset(names)

    def check(params: Params, match: re.Match[str], rules: Rules) -> str:
        if reason := _keys(params, allowed):
            return reason
        bad = [k for k, v in params.items() if v not in BOOLEAN]
        return f"query key {bad[0]!r} must be 0 or 1" if bad else ""

    return check


def _create(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"name"}):
        return reason
    if "name" in params and CREATE_NAME.fullmatch(params["name"]) is None:
        return f"container name must match {CREATE_NAME.pattern}"
    return ""


def _list(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"all", "limit", "size", "trunc_cmd", "filters"}):
        return reason
    for key in ("all", "trunc_cmd"):
        if key in params and params[key] not in BOOLEAN:
            return f"query key {key!r} must be 0 or 1"
    if params.get("size", "0") not in FALSE:
        return "size must be 0 (sizes are costly to compute)"
    if "limit" in params and _INT.fullmatch(params["limit"]) is None:
        return "limit must be an integer"
    if "filters" not in params:
        return f"listing needs filters with label {SANDBOX_LABEL_FILTER}"
    try:
        filters = strictjson.loads(params["filters"].encode(), max_bytes=4096, max_depth=2)
    except strictjson.StrictJSONError as e:
        return f"filters: {e}"
    if not isinstance(filters, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in filters.values()
    ):
        return "filters must be a JSON object of lists of strings"
    if extra := sorted(set(filters) - LIST_FILTERS):
        return f"filter {extra[0]!r} is not allowed"
    if SANDBOX_LABEL_FILTER not in filters.get("label", []):
        return f"listing needs filters with label {SANDBOX_LABEL_FILTER}"
    return ""


def _wait(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"condition"}):
        return reason
    if params.get("condition", "not-running") not in WAIT_CONDITIONS:
        return "condition must be one of " + ", ".join(sorted(WAIT_CONDITIONS))
    return ""


def _kill(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"signal"}):
        return reason
    if "signal" in params and _SIGNAL.fullmatch(params["signal"]) is None:
        return "signal must be a signal name or number"
    return ""


def _stats(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"stream", "one-shot"}):
        return reason
    if params.get("stream") not in FALSE:
        return "stats only with stream=0"
    if params.get("one-shot", "0") not in BOOLEAN:
        return "query key 'one-shot' must be 0 or 1"
    return ""


def _remove(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _booleans("v", "force", "link")(params, match, rules):
        return reason
    return "link must be false" if params.get("link", "0") in TRUE else ""


def _image_inspect(params: Params, match: re.Match[str], rules: Rules) -> str:
    if params:
        return "this endpoint takes no query"
    return _allowed_image(normalize_image(match.group("image")), rules)


def _pull(params: Params, match: re.Match[str], rules: Rules) -> str:
    if reason := _keys(params, {"fromImage", "tag"}):
        return reason
    name, tag = params.get("fromImage", ""), params.get("tag", "")
    # Without a tag the engine pulls every tag; a tag in both places is ambiguous.
    if not name or not tag or normalize_image(name) != f"{name}:latest" or "@" in tag:
        return "pull needs fromImage=<repository> and tag=<tag>"
    if tag.startswith("sha256:"):  # a pull by digest
        return _allowed_image(f"{name}@{tag}", rules)
    return _allowed_image(f"{name}:{tag}", rules)


def _allowed_image(image: str, rules: Rules) -> str:
    if image in {normalize_image(i) for i in rules.images}:
        return ""
    return f"image {image!r} is not an allowed sandbox image"


def _route(rule: str, methods: str, path: str, check: Check, **flags: bool) -> tuple[str, Route]:
    return rule, Route(rule, frozenset(methods.split()), re.compile(path), check, **flags)


ROUTES: dict[str, Route] = dict(
    [
        _route("ping", "GET HEAD", "/_ping", _no_query, unversioned=True),
        _route("version", "GET", "/version", _no_query, unversioned=True),
        _route("container-create", "POST", "/containers/create", _create, body=True),
        _route("container-list", "GET", "/containers/json", _list),
        _route("container-start", "POST", f"/containers/{_ID}/start", _no_query),
        _route(
            "container-attach",
            "POST",
            f"/containers/{_ID}/attach",
            _booleans("stdin", "stdout", "stderr", "stream", "logs"),
            upgrade=True,
        ),
        _route("container-wait", "POST", f"/containers/{_ID}/wait", _wait),
        _route("container-kill", "POST", f"/containers/{_ID}/kill", _kill),
        _route("container-inspect", "GET", f"/containers/{_ID}/json", _no_query),
        _route("container-stats", "GET", f"/containers/{_ID}/stats", _stats),
        _route("container-remove", "DELETE", f"/containers/{_ID}", _remove),
        _route("image-inspect", "GET", "/images/(?P<image>.+)/json", _image_inspect),
        _route("image-pull", "POST", "/images/create", _pull),
    ]
)

# Why a well-known endpoint is refused, for a message that helps whoever hits it.
_REFUSED: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), reason)
    for p, reason in [
        (r"/containers/[^/]+/exec|/exec/.*", "exec is never allowed"),
        (r"/containers/[^/]+/archive", "archive (copying files in or out) is never allowed"),
        (r"/containers/[^/]+/export", "export is never allowed"),
        (r"/containers/[^/]+/update", "update is never allowed"),
        (
            r"/build(?:/.*)?|/commit|/images/load|/images/[^/]+/push",
            "building images is not allowed",
        ),
        (r"/volumes(?:/.*)?", "volumes are not allowed"),
        (r"/networks(?:/.*)?", "networks are not allowed"),
        (r"/(?:swarm|services|nodes|tasks|secrets|configs)(?:/.*)?", "swarm is not allowed"),
        (r"/plugins(?:/.*)?", "plugins are not allowed"),
        (r"/session|/grpc", "sessions are not allowed"),
    ]
]
_CONTAINER_NAMED = re.compile(r"/containers/([^/]+)(/[^/]+)?")


def path_problem(path: str) -> str:
    """Why `path` is not canonical, or ""."""
    if _CANONICAL.fullmatch(path):
        return ""
    if "%" in path:
        return "percent-encoded paths are refused"
    if "//" in path:
        return "doubled slashes are refused"
    if any(s in (".", "..") for s in path.split("/")):
        return "dot segments are refused"
    if path.endswith("/"):
        return "a trailing slash is refused"
    return "the path holds characters outside [A-Za-z0-9._:-/]"


class Router:
    """Decides from method, path and query alone; body and ownership come after."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._by_method: dict[str, list[Route]] = {}
        for route in ROUTES.values():
            for method in route.methods:
                self._by_method.setdefault(method, []).append(route)

    def decide(self, method: str, path: str, query: str | None) -> Decision:
        if problem := path_problem(path):
            return Decision("path", problem)
        version = ""
        rest = path
        versioned = _VERSIONED.fullmatch(path)
        if versioned is not None:
            if int(versioned.group(1)) < MIN_API_MINOR:
                return Decision("api-version", f"API versions before 1.{MIN_API_MINOR} are refused")
            version, rest = f"1.{versioned.group(1)}", versioned.group(2)
        for route in self._by_method.get(method, ()):
            match = route.pattern.fullmatch(rest)
            if match is None:
                continue
            if versioned is None and not route.unversioned:
                break
            return self._check(route, match, query, version)
        if versioned is None:
            return Decision("api-version", "only versioned paths (/v1.NN/...) are allowed")
        return Decision("endpoint", self._why_not(method, rest))

    def _check(
        self, route: Route, match: re.Match[str], query: str | None, version: str
    ) -> Decision:
        try:
            params = parse_query(query) if query is not None else {}
        except QueryError as e:
            return Decision(route.rule, f"query: {e}", route)
        groups = match.groupdict()
        container = groups.get("id")
        reason = route.check(params, match, self.rules)
        image = None
        if route.rule == "image-inspect":
            image = normalize_image(match.group("image"))
        elif route.rule == "image-pull" and not reason:
            sep = "@" if params["tag"].startswith("sha256:") else ":"
            image = f"{params['fromImage']}{sep}{params['tag']}"
        return Decision(route.rule, reason, route, container, image, version)

    def _why_not(self, method: str, rest: str) -> str:
        for pattern, reason in _REFUSED:
            if pattern.fullmatch(rest):
                return reason
        named = _CONTAINER_NAMED.fullmatch(rest)
        if named is not None:
            # Would a full id in place of this name or short id have been allowed?
            as_id = f"/containers/{'0' * 64}{named.group(2) or ''}"
            if any(r.pattern.fullmatch(as_id) for r in self._by_method.get(method, ())):
                return "containers are named by their full 64-hex id only"
        return f"no rule allows {method} on this endpoint"


__all__ = ["ROUTES", "Decision", "Route", "Router", "normalize_image"]
