"""Helpers for tests that start real workspace processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path


def kill_slots(state_dir: Path) -> None:
    """Stop every process a local pool in state_dir started (tests must not leak them)."""
    for meta_file in (state_dir / "slots").glob("*/meta.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(meta_file.read_text())["pid"])
            if pid > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
