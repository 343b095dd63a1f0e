"""codepool without a checkout: the wheel built from this tree carries one version (the
package's), the LICENSE, Linux-only classifiers and the code-server installer; installed
into a fresh virtualenv (pipx's way), its `codepool` runs from anywhere, `codepool
install-code-server` finds the installer inside the package, and `codepool serve`
answers /livez."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import codepool
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def test_the_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("codepool-*.whl")
    assert wheel.name == f"codepool-{codepool.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"codepool-{codepool.__version__}.dist-info"
        meta = Parser().parsestr(z.read(f"{info}/METADATA").decode())
        installer = z.getinfo("codepool/install-code-server")
    assert f"{info}/licenses/LICENSE" in names
    assert meta["Version"] == codepool.__version__ and meta["License-Expression"] == "Apache-2.0"
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier", [])
    assert installer.external_attr >> 16 & 0o111  # executable
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)

    # A fresh virtualenv with the wheel alone; its dependencies come from this one's
    # site-packages (a path file), so nothing is downloaded, and the checkout's own
    # editable install is not seen.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "codepool"), *args],
            cwd=elsewhere, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"codepool {codepool.__version__}\n"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import codepool; print(codepool.__file__)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout's
    installed = run("install-code-server")  # the machine has it: the quick path
    assert installed.returncode == 0, installed.stderr
    assert "already installed" in installed.stdout

    # And it serves: /livez answers.
    port = free_port()
    env = {**os.environ, "CODEPOOL_LOCAL_STATE_DIR": str(tmp_path / "state"),
           "CODEPOOL_POOL_WARM_SPARES": "0"}  # fmt: skip
    env.pop("CODEPOOL_CONFIG", None)
    server = subprocess.Popen(
        [str(venv / "bin" / "codepool"), "serve", "--port", str(port)],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1) as r:
                    assert r.status == 200 and json.load(r) == {"status": "ok"}
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the installed router never answered /livez")
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out[-2000:]
