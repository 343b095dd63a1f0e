"""A small stand-in for code-server, started by the local backend in tests.

It answers /healthz like code-server, lists the files of its folder on /, and
reads and writes files under /files/<name>, so tests can prove a resumed workspace
has the same disk. Usage: python standin_workspace.py --port N --home DIR [--delay S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before listening")
    args = parser.parse_args()
    home = Path(args.home)
    time.sleep(args.delay)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            return

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                body = json.dumps({"status": "alive", "pid": os.getpid()}).encode()
                self._send(200, body, "application/json")
            elif self.path.startswith("/files/"):
                f = home / Path(self.path[len("/files/") :]).name
                if f.is_file():
                    self._send(200, f.read_bytes())
                else:
                    self._send(404, b"no such file")
            else:
                names = sorted(p.name for p in home.iterdir())
                html = "<html><head><title>stand-in</title></head><body>"
                html += "".join(f"<p>{n}</p>" for n in names) + "</body></html>"
                self._send(200, html.encode(), "text/html")

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            (home / Path(self.path[len("/files/") :]).name).write_bytes(self.rfile.read(length))
            self._send(201, b"written")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
