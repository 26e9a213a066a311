"""The report opens in a real browser (headless Chromium over the DevTools protocol, through a pipe).

Checks: the page loads, nothing is logged to the console as an error and no script error is thrown,
every <img> decodes to a non-empty bitmap, and no request leaves the file (only file:// and data: URLs).
Skipped with a reason when Chromium is not installed (CI installs Debian's `chromium` and turns the skip
into a failure through FEATHARM_REQUIRE_REFERENCES).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import featharm as fh  # noqa: E402

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, profile_dir):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds():  # runs in the child: its fd 3 reads our commands, its fd 4 carries the answers
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, params=None, session=None, timeout=30.0):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method, timeout=30.0):
        deadline = time.monotonic() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    sim = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, random_state=5)
    X = sim.X.rename(columns={sim.X.columns[0]: "<script>alert(1)</script>"})
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X, sim.covariates)
    path = tmp_path_factory.mktemp("browser") / "report.html"
    hm.report(X, sim.covariates, features=[X.columns[0]]).save_as_html(path)
    return path


@pytest.mark.slow
def test_report_loads_in_chromium(report_file, tmp_path):
    cdp = DevTools(tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable", session=session)
        cdp.send("Page.navigate", {"url": report_file.as_uri()}, session=session)
        cdp.wait_for("Page.loadEventFired", timeout=60)
        images = cdp.send("Runtime.evaluate", {
            "expression": "Promise.all(Array.from(document.images).map(i => i.decode().then("
                          "() => [i.naturalWidth, i.naturalHeight], e => 'failed: ' + e)))",
            "awaitPromise": True, "returnByValue": True}, session=session, timeout=60)["result"]["value"]
        title = cdp.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                         session=session)["result"]["value"]
        text = cdp.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                        session=session)["result"]["value"]
        alerts = cdp.send("Runtime.evaluate", {"expression": "document.querySelectorAll('script').length",
                                               "returnByValue": True}, session=session)["result"]["value"]
    finally:
        cdp.close()
    assert title == "featharm harmonization report"
    assert len(images) >= 7
    assert all(isinstance(v, list) and v[0] > 0 and v[1] > 0 for v in images), images
    errors = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    assert errors == []
    urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert alerts == 0 and "<script>alert(1)</script>" in text  # the feature name is shown as text
    for section in ("Data summary", "Covariate balance", "Preservation of biology", "Provenance"):
        assert section in text
