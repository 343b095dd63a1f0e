#!/usr/bin/env python3
"""Write docs/cli-reference.md from the CLI's own --help (datasette's habit), so the
reference cannot drift: tests/test_docs.py fails when the file differs from a fresh run.

    .venv/bin/python scripts/cli_reference.py        # rewrite docs/cli-reference.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from codepool.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli-reference.md"
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}


def commands() -> list[list[str]]:
    """Every command path, depth first: [], [assign], ..., [users], [users, add], ..."""
    root = get_command(app)
    found: list[list[str]] = [[]]

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", {}) or {}
        for name in sorted(subs):
            found.append([*path, name])
            walk(subs[name], [*path, name])

    walk(root, [])
    return found


def render() -> str:
    runner = CliRunner(env=ENV)
    parts = [
        "# `codepool` CLI reference\n",
        "Generated from `--help` by `scripts/cli_reference.py`; do not edit by hand",
        "(a test fails when this file and the CLI disagree). The guide is docs/cli.md.\n",
    ]
    for path in commands():
        result = runner.invoke(app, [*path, "--help"], prog_name="codepool")
        if result.exit_code != 0:
            raise SystemExit(f"codepool {' '.join(path)} --help failed: {result.output}")
        title = " ".join(["codepool", *path])
        text = "\n".join(line.rstrip() for line in result.output.strip().splitlines())
        parts.append(f"## `{title}`\n\n```\n{text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
