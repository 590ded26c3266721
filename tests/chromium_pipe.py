"""Headless Chromium driven over its DevTools pipe, for tests that act on a page as a person would.

:class:`Chromium` starts Chromium with ``--remote-debugging-pipe`` (DevTools protocol messages as
NUL-terminated JSON on file descriptors 3 and 4: no port, no extra package) and the project's
usual flags (:data:`deqa.report.browser.FLAGS`: headless, no sandbox, no GPU, no network
services), attaches to one page and offers ``open`` (navigate and wait for ``load``), ``value``
(evaluate JavaScript), ``wait`` (until an expression is truthy) and ``page`` (any DevTools
method, e.g. ``DOM.setFileInputFiles`` to choose files in an ``<input type=file>``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from contextlib import suppress

from deqa.report.browser import FLAGS


class Chromium:
    """Headless Chromium with ``--remote-debugging-pipe``: DevTools messages, NUL-terminated JSON, on fds 3/4."""

    def __init__(self, binary: str, width: int = 1000, height: int = 800):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        self.profile = tempfile.TemporaryDirectory(prefix="deqa-serve-chromium-")

        def fds() -> None:  # the pipe ends Chromium expects as fd 3 (commands) and fd 4 (answers)
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        cmd = [binary, *FLAGS, f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}"]
        self.proc = subprocess.Popen(
            [*cmd, "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id, self._events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", self.session)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "Chromium closed its DevTools pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer.get("result", {})
            self._events.append(answer)

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def open(self, url: str, timeout: float = 60) -> None:
        self._events.clear()
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._events.append(self._message(deadline))

    def value(self, expression: str):
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.value(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def close(self) -> None:
        with suppress(AssertionError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)
        self.profile.cleanup()
