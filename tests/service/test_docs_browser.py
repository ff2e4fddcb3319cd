"""The API docs in a real browser with no network: headless Chromium renders both UIs.

Chromium may resolve nothing but 127.0.0.1, and its network log must show that the pages asked
for nothing elsewhere. The rendered DOM must list every operation, and the screenshot must be
a real page, not a blank one.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.conftest import missing

pytestmark = [pytest.mark.service, pytest.mark.slow]

OPERATIONS = ("/execute", "/executions", "/executions/{execution_id}",
              "/executions/{execution_id}/events", "/languages", "/health", "/status",
              "/metrics")  # fmt: skip


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    missing("no Chromium is installed (apt-get install chromium)")
    raise AssertionError  # unreachable: missing() fails or skips


def browse(url: str, workdir: Path, *action: str) -> subprocess.CompletedProcess[str]:
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={workdir / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={workdir / 'net.json'}",
        "--window-size=1280,2000",
        "--virtual-time-budget=20000",
        *action,
        url,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


def requests_made_by(page_origin: str, net_log: Path) -> list[str]:
    """URLs the page asked for (the browser's own background requests are not the page's)."""
    log = json.loads(net_log.read_text())
    types = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    return [
        event["params"]["url"]
        for event in log["events"]
        if types.get(event["type"]) == "URL_REQUEST_START_JOB"
        and event.get("params", {}).get("initiator") == page_origin
    ]


def inked_rows(png: Path) -> tuple[int, int, int]:
    """(width, height, rows that differ from the row above or hold more than one colour)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += size + 12
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    # Filtered scanlines are all zeros where a row repeats the one above (or is one colour).
    inked = sum(
        1 for row in range(height) if raw[row * stride + 1 : (row + 1) * stride].strip(b"\0")
    )
    return width, height, inked


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_render_offline_with_every_operation(api: str, page: str, tmp_path: Path):
    dom = browse(api + page, tmp_path / "dom", "--dump-dom").stdout
    dom = re.sub(r"<wbr>|\u200b", "", dom)  # Swagger UI breaks long paths with these
    for operation in OPERATIONS:
        assert re.search(rf">\s*{re.escape(operation)}\s*<", dom), f"{operation} not rendered"
    asked = requests_made_by(api, tmp_path / "dom" / "net.json")
    assert any(url.endswith("/openapi.json") for url in asked)
    foreign = [url for url in asked if not url.startswith(api + "/")]
    assert foreign == [], f"the page asked the network for {foreign}"

    shot = tmp_path / f"{page.strip('/')}.png"
    browse(api + page, tmp_path / "shot", f"--screenshot={shot}")
    width, height, inked = inked_rows(shot)
    assert (width, height) == (1280, 2000)
    assert inked > 300, f"the screenshot looks blank ({inked} rows with content)"
