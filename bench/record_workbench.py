"""Record what a browser asks of code-server to open the workbench: every request of the
first page load, in order, with its method, path, kind, status, content type and size,
into bench/data/workbench.json, which bench/capacity.py replays for each person.

    python -m bench.record_workbench            # real code-server, real Chromium

code-server runs with --auth none on a loopback port, on an empty folder; Chromium
(Debian's) opens it and the recording ends when the workbench is shown and the network
has been quiet for two seconds. Only the mix is kept (paths, sizes, kinds), no bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import _lib

OUT = _lib.ROOT / "bench" / "data" / "workbench.json"
QUIET_S = 5.0


def _code_server() -> str:
    from codepool.core.backends.local import code_server_candidates

    found = next((str(p) for p in code_server_candidates() if p.is_file()), None)
    if found is None:
        subprocess.run([str(_lib.ROOT / "scripts" / "install-code-server")], check=True)
        found = next((str(p) for p in code_server_candidates() if p.is_file()), None)
    if found is None:
        raise _lib.BenchError("code-server is not installed (scripts/install-code-server)")
    return found


async def _record(url: str) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    seen: list[dict[str, Any]] = []
    last = time.monotonic()
    pending: list[asyncio.Future[None]] = []
    recording = True

    async def on_response(response: Any) -> None:
        nonlocal last
        last = time.monotonic()
        request = response.request
        parts = urlsplit(request.url)
        if parts.scheme not in ("http", "https"):
            return  # blob: and data: URLs never reach the network
        try:
            size = len(await response.body())
            wire = (await request.sizes())["responseBodySize"]  # as sent (compressed)
        except Exception:  # a redirect, a body the browser did not keep, or closing
            size = wire = 0
        seen.append(
            {
                "method": request.method,
                "path": parts.path + (f"?{parts.query}" if parts.query else ""),
                "kind": request.resource_type,
                "status": response.status,
                "type": response.headers.get("content-type", ""),
                "bytes": size,
                "wire_bytes": wire,
            }
        )

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium")
        page = await browser.new_page()

        def listen(response: Any) -> None:
            if recording:
                pending.append(asyncio.ensure_future(on_response(response)))

        page.on("response", listen)
        page.on(
            "websocket",
            lambda ws: seen.append(
                {"method": "GET", "path": urlsplit(ws.url).path, "kind": "websocket",
                 "status": 101, "type": "", "bytes": 0, "wire_bytes": 0}
            ),
        )  # fmt: skip
        await page.goto(url)
        await page.wait_for_selector(".monaco-workbench", timeout=60_000)
        await page.wait_for_load_state("networkidle")
        while time.monotonic() - last < QUIET_S:  # noqa: ASYNC110 (quiet means no event)
            await asyncio.sleep(0.2)
        await asyncio.gather(*pending)
        recording = False
        await browser.close()
    return seen


def run() -> dict[str, Any]:
    binary = _code_server()
    port = _lib.free_port()
    with tempfile.TemporaryDirectory(prefix="codepool-record-") as tmp:
        folder = Path(tmp) / "project"
        folder.mkdir()
        (folder / "README.md").write_text("# a project\n")
        proc = subprocess.Popen(
            [
                binary,
                "--auth", "none",
                "--bind-addr", f"127.0.0.1:{port}",
                "--user-data-dir", str(Path(tmp) / "data"),
                "--extensions-dir", str(Path(tmp) / "extensions"),
                "--disable-telemetry",
                "--disable-update-check",
                "--disable-workspace-trust",
                str(folder),
            ],
            env={**os.environ, "HOME": tmp},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise _lib.BenchError("code-server did not start") from None
                    time.sleep(0.2)
            requests = asyncio.run(_record(f"http://127.0.0.1:{port}/"))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    for r in requests:  # the same on every machine: not this run's folder
        r["path"] = r["path"].replace(str(folder).replace("/", "%2F"), "%2Fhome%2Fproject")
        r["path"] = r["path"].replace(str(folder), "/home/project")
        r["path"] = r["path"].replace(str(Path(binary).parents[2]).replace("/", "%2F"), "%2Fcs")
    http = [r for r in requests if r["kind"] != "websocket"]
    summary = {
        "requests": len(http),
        "bytes": sum(r["bytes"] for r in http),
        "wire_bytes": sum(r["wire_bytes"] for r in http),
        "html": sum(1 for r in http if r["type"].startswith("text/html")),
        "websockets": sum(1 for r in requests if r["kind"] == "websocket"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"code_server": binary.split("/")[-4], "summary": summary,
                               "requests": requests}, indent=1) + "\n")  # fmt: skip
    _lib.say(f"recorded {summary} into {OUT}")
    return summary


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    _lib.command(run)


if __name__ == "__main__":
    main()
