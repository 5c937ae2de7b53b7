"""Chromium for the browser tests (TESTING.md): Debian's binary driven by Playwright, a
profile that accepts third-party cookies, and a default context that refuses them."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import BrowserContext, Playwright, async_playwright

CHROMIUM: Final = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS: Final = Path(__file__).resolve().parent.parent / "artifacts"

if not CHROMIUM.exists() and os.environ.get("PIXELSYNC_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"{CHROMIUM} is missing and .ci/run requires the browser tests")
requires_chromium: Final = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install the Debian chromium package)"
)


@contextmanager
def serve_page(body: bytes, timeout_s: float = 20) -> Iterator[str]:
    """Serve one HTML page on 127.0.0.1 (at / and /index.html); yields its origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] in ("/", "/index.html"):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="publisher", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout_s)


@asynccontextmanager
async def chromium() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@asynccontextmanager
async def accepting_context(
    p: Playwright, user_data_dir: Path, timeout_ms: int = 20_000
) -> AsyncIterator[BrowserContext]:
    """A browser that accepts third-party cookies."""
    (user_data_dir / "Default").mkdir(parents=True, exist_ok=True)
    (user_data_dir / "Default" / "Preferences").write_text(
        json.dumps({"profile": {"cookie_controls_mode": 0}})
    )
    context = await p.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        timeout=timeout_ms,
    )
    try:
        context.set_default_timeout(timeout_ms)
        yield context
    finally:
        await context.close()


@asynccontextmanager
async def refusing_context(
    p: Playwright, timeout_ms: int = 20_000
) -> AsyncIterator[BrowserContext]:
    """A default context: Chromium blocks third-party cookies there."""
    browser = await p.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=timeout_ms
    )
    try:
        context = await browser.new_context()
        try:
            context.set_default_timeout(timeout_ms)
            yield context
        finally:
            await context.close()
    finally:
        await browser.close()
