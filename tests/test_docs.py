"""The docs cannot drift from the code: every setting is in config/example.toml (at its
default) and in docs/configuration.md, and nothing else is; exit codes match docs/cli.md."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

from codepool.cli.app import app
from codepool.cli.render import EXIT_CODES
from codepool.core.settings import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def code_settings() -> dict[str, object]:
    return {
        f"{section}.{f.name}": f.default
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }


def test_example_toml_has_every_setting_at_its_default() -> None:
    example = tomllib.loads((ROOT / "config" / "example.toml").read_text())
    found = {
        f"{section}.{key}": tuple(v) if isinstance(v, list) else v
        for section, values in example.items()
        for key, v in values.items()
    }
    assert found == code_settings()


def test_configuration_reference_has_every_setting_at_its_default_and_no_other() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([^|]+) \|", text, re.MULTILINE))
    assert set(rows) == set(code_settings())
    for key, default in code_settings().items():
        if isinstance(default, tuple) and default:
            continue  # local.command: shown in full below its table
        want = json.dumps(list(default) if isinstance(default, tuple) else default)
        assert rows[key].strip() == f"`{want}`", key


def test_cli_doc_lists_every_command_and_exit_code() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for name in names:
        assert f"`codepool {name}" in text, name
    rows = set(re.findall(r"^\| (\d) \| ([a-z, -]*) \|", text, re.MULTILINE))
    for code, kind in EXIT_CODES.values():
        assert any(c == str(code) and kind in kinds for c, kinds in rows), (code, kind)


def test_cli_reference_is_generated_from_the_cli() -> None:
    """docs/cli-reference.md is what scripts/cli_reference.py writes now; if this fails,
    run `.venv/bin/python scripts/cli_reference.py` and commit the result."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli-reference.md").read_text() == module.render()


def test_screenshots_are_current() -> None:
    """docs/images/ holds a picture of every page, made from the pages as they are now; if
    this fails, run `.venv/bin/python scripts/screenshots.py` and commit docs/images/."""
    from tests.gallery import IMAGES, PAGES, digests

    manifest = json.loads((IMAGES / "manifest.json").read_text())
    assert manifest["inputs"] == digests(), "the pages changed since the pictures were made"
    for name in [*PAGES, "workspace-chip", "workspace-panel", "workspace-warning"]:
        assert f"{name}.png" in manifest["images"], name
    for name in manifest["images"]:
        assert (IMAGES / name).read_bytes().startswith(b"\x89PNG"), name
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]+\]\((docs/images/[a-z-]+\.png)\)", readme)
    assert len(shown) >= 2 and all((ROOT / path).is_file() for path in shown), shown


def test_api_reference_is_generated_from_the_openapi_document() -> None:
    """docs/api.md is what scripts/api_reference.py writes now; if this fails, run
    `.venv/bin/python scripts/api_reference.py` and commit the result."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "api_reference", ROOT / "scripts" / "api_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "api.md").read_text() == module.render()


def test_every_doc_link_resolves_inside_the_repository() -> None:
    """Each relative link of the README, CHANGELOG and docs/ names a file (and, with
    #anchor, a heading) of the repository; no link leaves it for a file outside."""
    docs = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not a file of ours
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.is_relative_to(ROOT) or not file.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", doc.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
