"""The Docker security proxy: the only process that talks to the Docker engine's socket.

It listens where the worker's DOCKER_HOST points (PROXY_LISTEN), forwards to the engine
(PROXY_UPSTREAM), and serves only workers that prove the shared secret on every request
(`executor.proxyauth`; else 401). It lets through only what the service needs, only on the
service's own sandbox containers, only creates that `executor.policy.check_create` accepts for
the requesting worker, under a uid no living sandbox holds; only a container's creator may
start it or attach to it, and attach only once. Every decision is one JSON line in the audit
log (PROXY_AUDIT_LOG). Run it with `python -m executor.proxy`.

    http.py        strict request heads; response framing (length, chunked, until close, 101)
    strictjson.py  JSON read the way the engine reads it, or refused
    rules.py       the method and path table, each entry's query checks
    ownership.py   which container ids are ours, their creators and uids
    upstream.py    the engine's address and connections to it
    audit.py       the audit log
    server.py      connections: authenticate, decide, forward, relay, splice; time limits
"""
