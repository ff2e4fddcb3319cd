"""A warm container of a compiled language takes its profile's last cached build in advance
(EXECUTOR_STAGE_BUILDS): the same program runs on it as after its own build, and any other
program finds nothing of it.

Each service has a warm pool of one language only, in the branch's own images.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import docker
import pytest

from executor.config import Settings
from executor.models import File, RunRequest, RunResult
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.sandbox.conftest import one_language_services

pytestmark = pytest.mark.languages

ID = "57575757-5757-4575-8575-575757575757"
Services = Callable[[str, bool], ExecutionService]

# Says whether its binary was there before its source (staged) or written after it (shipped
# with the request, or built): each run's own view of how it got its build.
C_PROGRAM = """
#include <stdio.h>
#include <sys/stat.h>
int main(void) {
  struct stat bin, src;
  if (stat("main", &bin) || stat("main.c", &src)) return 3;
  int older = bin.st_mtim.tv_sec < src.st_mtim.tv_sec
      || (bin.st_mtim.tv_sec == src.st_mtim.tv_sec && bin.st_mtim.tv_nsec < src.st_mtim.tv_nsec);
  puts(older ? "staged" : "written after the source");
  return 0;
}
"""


@pytest.fixture(scope="module")
def services(settings: Settings, raw_docker: docker.DockerClient) -> Iterator[Services]:
    """services(language, stage): a service with a warm pool of one container of that
    language only, staging builds or not, made once per module."""
    pooled = one_language_services(settings, raw_docker, "stage")
    get = next(pooled)
    yield lambda language, stage: get(language, stage_builds=stage)
    next(pooled, None)


def run(svc: ExecutionService, code: str, language: str, **fields: object) -> RunResult:
    deadline = time.monotonic() + 60
    while svc.pool_stats()["warm"] < 1:
        assert time.monotonic() < deadline, f"no warm container: {svc.pool_stats()}"
        time.sleep(0.05)
    request = RunRequest(
        code=code,
        language=language,
        limits=default_limits(svc.settings),
        **fields,  # type: ignore[arg-type]
    )
    result = svc.run(request, ID)
    assert result.warm, result
    return result


def unique(code: str) -> str:
    return f"{code}\n// {uuid.uuid4()}\n"


def test_the_same_program_runs_on_the_build_its_container_took_in_advance(services: Services):
    svc = services("c", True)
    code = unique(C_PROGRAM)
    seen = []
    for _ in range(5):
        result = run(svc, code, "c")
        assert result.status == "success" and result.compile is not None, result
        seen.append((result.compile.cached, result.stdout))
    # Built; then cached (shipped with the request when its container was warm before the
    # build was kept); from then on each warm container holds it before the request comes.
    assert seen[0] == (False, "written after the source\n")
    assert seen[1][0] is True
    assert seen[2:] == [(True, "staged\n")] * 3


def test_without_staging_the_build_comes_with_the_request(services: Services):
    svc = services("c", False)
    code = unique(C_PROGRAM)
    outputs = {run(svc, code, "c").stdout for _ in range(4)}
    assert outputs == {"written after the source\n"}


JAVA_WITH_HELPER = """
public class Main {
    public static void main(String[] args) { System.out.println(Helper.NAME); }
}
class Helper { static final String NAME = "helper"; }
"""
JAVA_LOOKING = """
import java.io.File;
import java.util.Arrays;
public class Main {
    public static void main(String[] args) {
        String[] names = new File(".").list();
        Arrays.sort(names);
        System.out.println(String.join(" ", names));
    }
}
"""


@pytest.mark.hostile
def test_another_program_finds_nothing_of_a_staged_build(services: Services):
    """Another user's build staged in the warm container is gone before this program exists:
    nothing of it in the working directory."""
    svc = services("java", True)
    code = unique(JAVA_WITH_HELPER)
    for _ in range(3):  # built, shipped, then staged in the next warm container
        assert run(svc, code, "java").stdout == "helper\n"
    looking = run(svc, unique(JAVA_LOOKING), "java")
    assert looking.status == "success", looking
    assert looking.stdout == "Main.class Main.java\n"  # no Helper.class left behind
    again = run(svc, code, "java")  # and the next container holds the first build again
    assert (again.stdout, again.compile.cached if again.compile else None) == ("helper\n", True)


def test_a_request_that_writes_where_a_staged_product_is_gets_its_own_order(
    services: Services,
):
    """Extra files are written before the products when a request carries them: a request
    whose file has a product's path must not see it overwrite the staged product."""
    svc = services("c", True)
    code = unique('#include <stdio.h>\nint main(void) { puts("built"); return 0; }\n')
    files = (File("main", "not a program\n"),)
    for n in range(4):
        result = run(svc, code, "c", files=files)
        assert (result.status, result.stdout) == ("success", "built\n"), (n, result)
