"""``inspect view`` in a real browser (slow): a tiny ``eval --inspect_log`` run, bundled with
inspect_ai's ``bundle_log_dir``, served on 127.0.0.1 and opened in headless Chromium.

Chromium is driven through its DevTools protocol (aiohttp's websocket client) rather than
``--dump-dom --virtual-time-budget``: the viewer reads the log in web workers, which virtual time
does not wait for, so a DOM dump shows "Loading log…". The server answers HTTP Range requests,
which the viewer uses to read the ``.eval`` zip (Python's http.server ignores them).

Set ``METRICWISE_SCREENSHOT=path.png`` to keep the screenshot of a sample's scores
(``docs/inspect_view.png`` was made so).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, with single byte ranges (``Range: bytes=a-b``) answered as 206."""

    _remaining: int | None = None

    def send_head(self) -> Any:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not match or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(match[1]) if match[1] else max(size - int(match[2] or 0), 0)
        end = min(int(match[2]), size - 1) if match[1] and match[2] else size - 1
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._remaining is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self._remaining))
        self._remaining = None

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def _browse(debug_port: int, url: str, wants: list[str], scroll_to: str | None) -> Any:
    import aiohttp

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list") as r:
                pages = [p for p in json.load(r) if p["type"] == "page"]
            if pages:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
        await asyncio.sleep(0.1)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws,
    ):
        ids = iter(range(1, 10**6))

        async def call(method: str, **params: Any) -> dict[str, Any]:
            my = next(ids)
            await ws.send_json({"id": my, "method": method, "params": params})
            while True:
                msg = json.loads((await ws.receive(timeout=30)).data)
                if msg.get("id") == my:
                    assert "error" not in msg, msg
                    return msg["result"]

        await call("Page.navigate", url=url)
        text = ""
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            result = await call(
                "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
            )
            text = result["result"].get("value", "")
            if all(w in text for w in wants):
                break
            await asyncio.sleep(0.5)
        png = None
        if scroll_to is not None:
            await call(
                "Runtime.evaluate",
                expression=(
                    "[...document.querySelectorAll('div')].find("
                    f"e => e.children.length === 0 && e.textContent.trim() === {scroll_to!r})"
                    "?.scrollIntoView({block: 'center'})"
                ),
            )
            await asyncio.sleep(1)
            png = base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
        return text, png


def browse(url: str, wants: list[str], scroll_to: str | None = None) -> tuple[str, bytes | None]:
    """The rendered text of ``url`` once it shows every one of ``wants`` (or after 45 s), and
    a 1400x900 screenshot with the element reading ``scroll_to`` centred, when asked."""
    from fake_openai_server import free_port

    assert CHROMIUM is not None
    debug_port = free_port()
    # Chromium's helper processes may still write to the profile for a moment after the main
    # one exits: its removal must not fail the test.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                f"--remote-debugging-port={debug_port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return asyncio.run(_browse(debug_port, url, wants, scroll_to))
        finally:
            proc.terminate()
            proc.wait(15)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("aiohttp")
    pytest.importorskip("torch")
    pytest.importorskip("inspect_ai")
    from inspect_ai.log import bundle_log_dir

    from metricwise.evaluate.runner import run_eval
    from tiny_lm import tiny_backend, tiny_eval_config

    tmp_path = tmp_path_factory.mktemp("view")
    config = tiny_eval_config(tmp_path, limit=3, curve_subsets=0, plots=False, inspect_log=True)
    run_eval(config, backend=tiny_backend())
    bundle_log_dir(log_dir=str(tmp_path / "out" / "inspect"), output_dir=str(tmp_path / "site"))
    ids = [
        json.loads(line)["id"]
        for line in (tmp_path / "out" / "samples_arith.jsonl").read_text().splitlines()
    ]
    handler = functools.partial(RangeHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ids
    finally:
        server.shutdown()
        server.server_close()


def test_the_viewer_lists_the_items_with_each_decoders_scores(site):
    url, ids = site
    text, _ = browse(f"{url}/#/logs/arith.eval", [*ids, "3 Samples"])
    assert "arith" in text and "hf:tiny-test" in text
    assert all(item in text for item in ids), text[:2000]  # the item list
    assert "3 Samples" in text
    # The decoders as scorers, and a decoder's score: its name, then its values.
    assert "median.absolute_error" in text and "mbr[squared_error]+model" in text
    assert re.search(r"Scorer\s+absolute_error.*\n(greedy|prior)\s+[\d.]+", text), text[:2000]


def test_a_samples_scoring_tab_shows_the_rule_and_its_explanation(site):
    url, ids = site
    text, png = browse(
        f"{url}/#/logs/arith.eval/samples/sample/{ids[0]}/1/scoring",
        ["rule median for absolute_error"],
        scroll_to="median",
    )
    assert f"Sample {ids[0]}" in text
    assert "rule median for absolute_error; " in text, text[:3000]
    assert re.search(r"\d+ of 4 samples valid", text)
    assert png is not None and png.startswith(b"\x89PNG")
    if os.environ.get("METRICWISE_SCREENSHOT"):
        Path(os.environ["METRICWISE_SCREENSHOT"]).write_bytes(png)
