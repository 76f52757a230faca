"""Real headless Chromium for the browser personas: Debian's chromium + chromedriver through
selenium, launched as tests/test_console.py launches it, with a normal user agent unless the
persona is the headless scraper. Chromium cannot bind a source address, so each browser talks
to a small TCP relay on 127.0.0.1 that connects to the gateway from the persona's own address.
Statuses come from Chromium's own network log (the performance log), bodies of refusals from
the DevTools protocol, so the harness records what the browser really got."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from urllib.parse import urlsplit

from loadtest.eval.traffic import Log

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver")


def available() -> bool:
    return os.access(CHROMIUM, os.X_OK) and CHROMEDRIVER is not None


class Relay:
    """127.0.0.1:port -> the gateway, from `source` (changeable: new connections use the new one)."""

    def __init__(self, target_host: str, target_port: int, source: str) -> None:
        self.target, self.source = (target_host, target_port), source
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target, local_addr=(self.source, 0))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


class Chromium:
    """One Chromium profile; blocking (selenium), so personas call it from a worker thread."""

    def __init__(self, relay_url: str, log: Log, name: str, agent: str | None) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base, self.log, self.name = relay_url, log, name
        self._profile = tempfile.mkdtemp(prefix="fairgate-eval-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--lang=en-GB", f"--user-data-dir={self._profile}", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update"):
            options.add_argument(flag)
        if agent:
            options.add_argument(f"--user-agent={agent}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)

    def open(self, path: str) -> None:
        """Navigate (a person following a link), then record what the browser fetched."""
        from selenium.common.exceptions import WebDriverException

        try:
            self.driver.get(self.base + path)
        except WebDriverException:
            self.log.error(self.name, "GET", path)
        self._wait_out_challenge()
        self._record()

    def _wait_out_challenge(self) -> None:
        """A person waits while the gateway's challenge page checks the browser and reloads;
        navigating on at once would cut its script off."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def passed(driver: object) -> bool:
            try:
                return bool(self.driver.execute_script(
                    "return document.readyState === 'complete' && "
                    "!document.querySelector('body[data-fairgate-outcome=\"challenge\"]')"))
            except Exception:  # the reload replaced the document mid-call: look again
                return False

        with contextlib.suppress(TimeoutException):
            WebDriverWait(self.driver, 15).until(passed)

    def script(self, source: str, *args: object) -> object:
        from selenium.common.exceptions import WebDriverException

        try:
            result = self.driver.execute_async_script(source, *args)
        except WebDriverException:
            result = None
        self._record()
        return result

    def set_cookie(self, name: str, value: str) -> None:
        self.driver.add_cookie({"name": name, "value": value, "path": "/"})

    def _record(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.responseReceived":
                continue
            params = message["params"]
            response = params["response"]
            if not response["url"].startswith(self.base):
                continue
            parts = urlsplit(response["url"])
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            status = int(response["status"])
            body = b""
            if status >= 400:
                with contextlib.suppress(Exception):
                    got = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": params["requestId"]})
                    body = got.get("body", "").encode()
            headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
            at = entry["timestamp"] / 1000.0
            self.log.add(self.name, "GET", target, status, headers.get("content-type", response.get("mimeType", "")),
                         body, at=at, page_outcome=headers.get("fairgate-outcome"))

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self._profile, ignore_errors=True)
