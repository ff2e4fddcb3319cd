"""The Docker security proxy: the only process that talks to the Docker engine's socket.

It listens where the worker's DOCKER_HOST points (PROXY_LISTEN), forwards to the engine
(PROXY_UPSTREAM), and lets through only what the service needs, only on the service's own
sandbox containers, and only creates that `executor.policy.check_create` accepts. Every decision
is one JSON line in the audit log (PROXY_AUDIT_LOG). Run it with `python -m executor.proxy`.

    http.py        strict request heads; response framing (length, chunked, until close, 101)
    strictjson.py  JSON read the way the engine reads it, or refused
    rules.py       the method and path table, each entry's query checks
    ownership.py   which container ids are ours
    upstream.py    the engine's address and connections to it
    audit.py       the audit log
    server.py      connections: decide, forward, relay, splice
"""
