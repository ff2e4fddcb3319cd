"""The path most sandboxes take, for comparison: one container per run through the docker SDK,
with our hardening, the output read back from the log driver."""

from __future__ import annotations

import docker

from executor.config import Settings

BENCH_LABEL = "io.executor.bench"  # every container the bench makes itself; removed at the end


def naive_run(
    client: docker.DockerClient,
    settings: Settings,
    image: str,
    command: list[str],
    *,
    env: tuple[tuple[str, str], ...] = (),
    exec_tmpfs: bool = False,
    timeout: float = 60,
) -> tuple[bytes, bytes]:
    """Create, start, wait for, read and remove one hardened container; (stdout, stderr)."""
    s = settings
    flags = "rw,exec,nosuid,nodev" if exec_tmpfs else "rw,nosuid,nodev"
    container = client.containers.create(
        image,
        command,
        user="10001:10001",
        working_dir="/tmp",
        environment=[f"{k}={v}" for k, v in env],
        network_disabled=True,
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": f"{flags},size={s.tmpfs_mb}m,mode=1777"},
        mem_limit=f"{s.default_memory_mb}m",
        memswap_limit=f"{s.default_memory_mb}m",
        nano_cpus=round(s.default_cpus * 1e9),
        pids_limit=s.pids_limit,
        security_opt=["no-new-privileges"],
        cap_drop=["ALL"],
        ulimits=[
            docker.types.Ulimit(name="nofile", soft=s.nofile_limit, hard=s.nofile_limit),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        init=True,
        labels={BENCH_LABEL: "naive"},
    )
    try:
        container.start()
        container.wait(timeout=timeout)
        return container.logs(stdout=True, stderr=False), container.logs(stdout=False, stderr=True)
    finally:
        container.remove(force=True)
