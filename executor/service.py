"""The execution service of one worker process: warm pool, sandbox, disposal and reaper.

`run()` is all a task needs: a validated request in, a result out. The program's outcome is
data; only infrastructure faults raise (our own ExecutorError subclasses).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from executor.cancellation import CancelToken
from executor.config import Settings
from executor.engine import Engine
from executor.errors import ContainerLost, InvalidRequest
from executor.languages import languages
from executor.models import Language, RunRequest, RunResult
from executor.pool import Profile, WarmPool
from executor.protocol import OutputSink
from executor.reaper import Reaper
from executor.results import resumed
from executor.sandbox import Container, Events, Sandbox

log = logging.getLogger(__name__)


class ExecutionService:
    """Runs requests in single-use sandboxes. Construction does no I/O; `start()` begins."""

    def __init__(self, settings: Settings, events: Events | None = None) -> None:
        self.settings = settings
        self.engine = Engine(settings)
        self.sandbox = Sandbox(settings, self.engine, events)
        self.languages = languages(settings)
        served = settings.worker_languages or tuple(self.languages)
        # What this worker serves: its languages whose images its engine has (see start()).
        self.served: tuple[str, ...] = tuple(served)
        self._disposer = ThreadPoolExecutor(4, "sandbox-dispose")
        # One pooled profile per language this worker serves, Python (the default) first.
        profiles = [
            Profile(lang, settings.default_memory_mb, settings.default_cpus)
            for lang in self.languages.values()
            if lang.name in served
        ]
        self.pool = WarmPool(
            self.sandbox,
            profiles,
            size=settings.pool_size,
            max_idle_s=settings.pool_max_idle_s,
            refill_concurrency=settings.pool_refill_concurrency,
            dispose=self.dispose,
            demand_window_s=settings.pool_max_idle_s,
        )
        self.reaper = Reaper(
            self.engine,
            self.sandbox.owner,
            max_timeout=settings.max_timeout,
            max_idle_s=settings.pool_max_idle_s,
            interval=settings.reap_interval_s,
            events=events,
        )
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start the warm pool and the reaper (both in the background)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        missing = [
            name
            for name in self.served
            if name in self.languages and self.engine.has_image(self.languages[name].image) is False
        ]
        if missing:
            log.warning("no image for %s on this engine: not served here", ", ".join(missing))
            self.served = tuple(name for name in self.served if name not in missing)
            self.pool.restrict(set(self.served))
        self.reaper.start()
        self.pool.start()

    def stop(self) -> None:
        """Drain the pool, finish pending removals, stop the reaper."""
        self.pool.stop()
        self.reaper.stop()
        self._disposer.shutdown(wait=True)
        self.engine.close()

    def run(
        self,
        request: RunRequest,
        execution_id: str,
        cancel: CancelToken | None = None,
        output: OutputSink | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> RunResult:
        """Run `request` once in a fresh container (warm when one fits) and remove it after;
        `output` receives the program's output frames as they arrive.

        A `cancel` kills the container (see executor.cancellation): the result is `cancelled`.
        With `later`, the removal of the containers (and the pool's refill of a warm one) is
        appended there for the caller to call once it has stored the result; the program has
        ended by then (its runner has reported, or the container was killed).
        """
        language = self.languages.get(request.language)
        if language is None:
            raise InvalidRequest(
                f"unknown language {request.language!r}",
                errors={"language": [f"must be one of {sorted(self.languages)}"]},
            )
        limits = request.limits
        warm = None
        if request.image and request.image != language.image:
            if request.image not in language.extra_images:
                raise InvalidRequest(
                    f"image {request.image!r} is not approved for {language.name}",
                    errors={"image": [f"must be one of {list(language.extra_images)}"]},
                )
            language = replace(language, image=request.image)  # cold: the pool holds defaults
        else:
            warm = self.pool.take(language, limits.memory_mb, limits.cpus)
        result = None
        if warm is not None:
            try:
                result = self._execute(
                    warm, request, execution_id, cancel, output, later, warm=True
                )
            except ContainerLost as e:
                # Nothing of the program ran: a fresh container may take it.
                log.warning("execution %s: warm container lost (%s); going cold", execution_id, e)
        if result is None:
            cold = self.sandbox.prepare(language, limits.memory_mb, limits.cpus, execution_id)
            result = self._execute(cold, request, execution_id, cancel, output, later, warm=False)
        return self._resume(language, request, execution_id, result, cancel, output, later)

    def _resume(
        self,
        language: Language,
        request: RunRequest,
        execution_id: str,
        result: RunResult,
        cancel: CancelToken | None,
        output: OutputSink | None,
        later: list[Callable[[], None]] | None,
    ) -> RunResult:
        """Run the test cases a sandbox's end left unrun in fresh sandboxes, one case's memory
        kill at a time: under gVisor it ends the whole sandbox, and the other cases still run.
        Each resumption runs at least one case more, so this ends."""
        limits = request.limits
        while result.resume_at is not None and not (cancel is not None and cancel.is_set()):
            at = result.resume_at
            log.info(
                "execution %s: the sandbox ended at a test case; resuming at %d", execution_id, at
            )
            rest = replace(request, tests=request.tests[at:])
            fresh = self.sandbox.prepare(language, limits.memory_mb, limits.cpus, execution_id)
            result = resumed(
                result,
                self._execute(fresh, rest, execution_id, cancel, output, later, warm=False),
            )
        return result

    def _execute(
        self,
        container: Container,
        request: RunRequest,
        execution_id: str,
        cancel: CancelToken | None,
        output: OutputSink | None,
        later: list[Callable[[], None]] | None,
        warm: bool,
    ) -> RunResult:
        """Run in `container`, then dispose of it whatever happened (or leave that to
        `later`, see run())."""
        try:
            result = self.sandbox.execute(container, request, cancel, output)
        except BaseException:
            self._release(container, warm)  # nothing to answer first
            raise
        if later is None:
            self._release(container, warm)
        else:
            later.append(functools.partial(self._release, container, warm))
        result.warm = warm
        log.info(
            "execution %s: %s (exit %s, %d ms, %s container %s)",
            execution_id,
            result.status,
            result.exit_code,
            result.duration_ms,
            "warm" if warm else "cold",
            container.id[:12],
        )
        return result

    def _release(self, container: Container, warm: bool) -> None:
        """Dispose of a container an execution is done with; a warm one's place in the pool
        may be refilled now."""
        self.dispose(container)
        if warm:
            self.pool.released(container)

    def dispose(self, container: Container) -> None:
        """Remove `container` in the background: removal is not on anyone's critical path."""
        try:
            self._disposer.submit(self.sandbox.destroy, container)
        except RuntimeError:  # shutting down: remove it now
            self.sandbox.destroy(container)

    def pool_stats(self) -> dict[str, Any]:
        return self.pool.stats()

    def ping(self) -> None:
        self.engine.ping()
