"""The operator's page in a real browser with no network: what it shows matches GET /status."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.service.conftest import post
from tests.service.test_docs_browser import chromium, inked_rows, requests_made_by

pytestmark = [pytest.mark.service, pytest.mark.slow]


def browse(url: str, workdir: Path, *action: str) -> str:
    """Chromium with no network but 127.0.0.1; no virtual-time budget: the page has no script,
    and its refresh would keep a budget from running out."""
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu"]
    argv += ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
    argv += [f"--user-data-dir={workdir / 'profile'}", f"--log-net-log={workdir / 'net.json'}"]
    argv += ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1280,1800"]
    run = [*argv, *action, url]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def cells(dom: str, row_class: str, *cell_classes: str) -> list[tuple[str, ...]]:
    """The text of the cells of class `cell_classes` in each <tr class=row_class>."""
    rows = re.findall(rf'<tr class="{row_class}">(.*?)</tr>', dom, re.S)
    found = []
    for row in rows:
        found.append(
            tuple(
                re.search(rf'<td class="(?:n )?{name}">\s*(.*?)\s*</td>', row, re.S).group(1)  # type: ignore[union-attr]
                for name in cell_classes
            )
        )
    return found


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">\s*(.*?)\s*<', dom, re.S)
    assert match, f"#{element_id} is not on the page"
    return match.group(1)


def test_the_operators_page_shows_what_status_says(api: str, tmp_path: Path):
    ok = post(f"{api}/execute", {"code": "print('fine')"}).json()
    failed = post(f"{api}/execute", {"code": "raise SystemExit(4)"}).json()
    assert (ok["status"], failed["status"]) == ("success", "error")

    dom = browse(f"{api}/dashboard", tmp_path / "dom", "--dump-dom")
    state = requests.get(f"{api}/status", timeout=30).json()

    assert text_of(dom, "instance") == state["instance"]
    assert int(text_of(dom, "queue-depth")) == state["queue"]["depth"]
    assert int(text_of(dom, "workers-count")) == len(state["workers"])
    assert [name for (name,) in cells(dom, "worker", "name")] == [
        w["name"] for w in state["workers"]
    ]
    # The pool per language: every language /status lists, with its target.
    pool = {name: int(target) for name, target in cells(dom, "language", "name", "target")}
    assert pool == {name: p["target"] for name, p in state["pool"]["languages"].items()}
    # Recent executions, newest first, with their statuses, as /status lists them.
    recent = cells(dom, "execution", "id", "status")
    assert [i for i, _ in recent] == [r["id"] for r in state["recent"]]
    for (_, shown), entry in zip(recent, state["recent"], strict=True):
        # An execution of an earlier test may have finished between the page and /status.
        assert shown == entry["status"] or shown in ("queued", "running"), (shown, entry)
    assert (failed["id"], "error") in recent and (ok["id"], "success") in recent
    # The charts count both in the last hour, each bar with its status.
    assert int(text_of(dom, "hour-total")) >= 2
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]*)</title>', dom)
    assert any(t.endswith(" success") for t in bars) and any(t.endswith(" error") for t in bars)
    assert text_of(dom, "hour-p50").endswith(" ms")
    # The page asked the network for nothing but itself.
    asked = requests_made_by(api, tmp_path / "dom" / "net.json")
    foreign = [url for url in asked if not url.startswith(api + "/")]
    assert foreign == [], f"the page asked the network for {foreign}"

    assert requests.get(f"{api}/", timeout=30).text.count('<tr class="worker">') >= 1
    shot = tmp_path / "dashboard.png"
    browse(f"{api}/dashboard", tmp_path / "shot", f"--screenshot={shot}")
    _, _, inked = inked_rows(shot)
    assert inked > 300, f"the screenshot looks blank ({inked} rows with content)"
