"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): open a page from disk,
wait for its self-check, and read back the console, the DOM and a screenshot. Needs nothing but the browser binary.

WebGL runs on SwiftShader (Chromium's CPU renderer), so 3D views draw on machines without a GPU.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser to test with: $REGRESS_CHROMIUM, else the first of BINARIES on the PATH."""
    named = os.environ.get("REGRESS_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for path in map(shutil.which, BINARIES) if path), None)


@dataclass
class PageCheck:
    """What a browser saw of a page: its self-check, its images and 3D views, the console, a screenshot."""

    state: str  # the page's <body data-gallery>: ready, failed, or loading when it timed out
    failures: list[str]
    images: list[dict[str, Any]]  # {"src", "width"}: naturalWidth, 0 when the image did not load
    views: list[dict[str, Any]]  # {"file", "std", "changed"}: the view's pixels' spread and the share off its background
    console_errors: list[str]  # console.error calls, uncaught errors, failed loads: the page's record and the protocol's
    screenshot: np.ndarray  # (H, W, 3) uint8, the viewport
    seconds: float
    warnings: list[str] = field(default_factory=list)


class DevTools:
    """One Chromium process and its DevTools pipe: `call` sends a command and returns its result; events pile up."""

    def __init__(self, binary: str, width: int, height: int, log: Path) -> None:
        self.profile = tempfile.mkdtemp(prefix="regress-chromium-")
        to_browser, from_browser = os.pipe(), os.pipe()
        # moved above fd 4, so the child's dup2 onto 3 and 4 never overwrites one of them
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (*to_browser, *from_browser)]
        for fd in (*to_browser, *from_browser):
            os.close(fd)
        child_reads, self.writer, self.reader, child_writes = high

        def pipe_fds() -> None:  # the protocol's fds: the browser reads commands on 3, writes replies on 4
            os.dup2(child_reads, 3)
            os.dup2(child_writes, 4)

        flags = [
            "--headless", "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--window-size={width},{height}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            [binary, *flags, "about:blank"], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            preexec_fn=pipe_fds, close_fds=False,
        )  # fmt: skip
        os.close(child_reads)
        os.close(child_writes)
        self.next_id, self.buffer, self.events = 0, b"", []
        self.session: str | None = None

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0, session: bool = True) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)

    def _read(self, deadline: float) -> list[dict]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.reader], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            piece = os.read(self.reader, 1 << 20)
            if not piece:
                raise RuntimeError(f"Chromium exited (status {self.process.poll()}); its log: {self.log.name}")
            self.buffer += piece
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages]

    def open_page(self, url: str, width: int, height: int) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console(self, levels: tuple[str, ...]) -> list[str]:
        """Console messages, uncaught exceptions and browser log entries (failed loads) at these levels."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in levels:
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown" and "error" in levels:
                details = params.get("exceptionDetails", {})
                found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in levels:
                found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.reader, self.writer):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# The page's own record of its errors, kept from before its first script: the protocol's console events can miss
# messages logged while the page's new renderer process starts.
ERROR_HOOK = """
window.__errors = [];
const logError = console.error.bind(console);
console.error = (...args) => { window.__errors.push(args.map(String).join(" ")); logError(...args); };
addEventListener("error", (e) => window.__errors.push(e instanceof ErrorEvent ? e.message
  : `failed to load ${e.target && (e.target.currentSrc || e.target.src || e.target.tagName)}`), true);
addEventListener("unhandledrejection", (e) => window.__errors.push(`unhandled rejection: ${e.reason}`));
"""

FACTS = """JSON.stringify({
  errors: window.__errors || [],
  state: document.body.dataset.gallery,
  failures: JSON.parse(document.body.dataset.failures || "[]"),
  images: [...document.images].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth})),
  views: [...document.querySelectorAll("model-viewer")].map(v => {
    const r = v.getBoundingClientRect();
    return {file: v.dataset.file, x: r.x, y: r.y, width: r.width, height: r.height};
  }),
})"""


def check_page(page: Path, binary: str, width: int = 1400, height: int = 2400, timeout: float = 120.0) -> PageCheck:
    """Open `page` from disk in headless Chromium, wait for its self-check (or `timeout`), and report what it saw.

    Each 3D view's pixels are read from a screenshot: `std` is their standard deviation over the view's box, `changed`
    the share of pixels that differ by more than 8 levels from its most common colour (the view's background)."""
    start = time.monotonic()
    browser = DevTools(binary, width, height, page.parent / "chromium.log")
    try:
        browser.open_page(page.resolve().as_uri(), width, height)
        while browser.evaluate("document.body ? document.body.dataset.gallery || 'loading' : 'loading'") == "loading":
            if time.monotonic() - start > timeout:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # a few more frames: the views draw after their models report visible
        facts = json.loads(browser.evaluate(FACTS))
        shot = browser.call("Page.captureScreenshot", {"format": "png"})["data"]
        screenshot = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"))
        views = []
        for view in facts["views"]:
            x, y = int(view["x"]), int(view["y"])
            box = screenshot[max(y, 0) : y + int(view["height"]), max(x, 0) : x + int(view["width"])].astype(np.int16)
            if box.size == 0:
                views.append({"file": view["file"], "std": 0.0, "changed": 0.0})
                continue
            colours, counts = np.unique(box.reshape(-1, 3), axis=0, return_counts=True)
            off = np.abs(box - colours[counts.argmax()]).max(axis=-1) > 8
            views.append({"file": view["file"], "std": float(box.std()), "changed": float(off.mean())})
        return PageCheck(
            state=facts["state"] or "loading", failures=facts["failures"], images=facts["images"], views=views,
            console_errors=list(dict.fromkeys(facts["errors"] + browser.console(("error", "assert")))), screenshot=screenshot,
            seconds=time.monotonic() - start, warnings=browser.console(("warning",)),
        )  # fmt: skip
    finally:
        browser.close()
