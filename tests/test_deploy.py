"""deploy/: the CloudFormation template passes cfn-lint and sets the group up the way the
aws backend needs it; its router policy is exactly what `codepool iam-policy` prints; the
shell scripts pass shellcheck and the systemd units pass systemd's own checker."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codepool.core.backends.aws import iam_policy
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"


def load() -> dict[str, Any]:
    from cfnlint.decode.decode import decode

    template, problems = decode(str(TEMPLATE))
    assert not problems and template is not None
    return dict(template)


def resolve(node: Any, group: str) -> Any:
    """The template's values with the group name filled in (Ref and Sub of GroupName)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] == "GroupName":
            return group
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            return node["Fn::Sub"].replace("${GroupName}", group)
        return {k: resolve(v, group) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, group) for v in node]
    return node


def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_group_is_safe_for_codepool() -> None:
    group = load()["Resources"]["WorkspaceGroup"]["Properties"]
    assert group["NewInstancesProtectedFromScaleIn"] is True
    assert {"Key": "Owner", "Value": "UNASSIGNED", "PropagateAtLaunch": True} in group["Tags"]
    assert "DesiredCapacity" not in group  # codepool owns it; a stack update must not reset it
    ingress = load()["Resources"]["WorkspaceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert all("CidrIp" not in rule and "SourceSecurityGroupId" in rule for rule in ingress)


def test_the_workspace_origins_get_a_wildcard_name_and_certificate() -> None:
    resources = load()["Resources"]
    record = resources["WorkspaceRecord"]["Properties"]
    assert record["Name"] == {"Fn::Sub": "*.${WorkspaceDomain}"}
    certificate = resources["Certificate"]["Properties"]
    assert certificate["SubjectAlternativeNames"] == [{"Fn::Sub": "*.${WorkspaceDomain}"}]
    assert certificate["ValidationMethod"] == "DNS"


def test_the_router_role_has_exactly_the_iam_policy() -> None:
    role = load()["Resources"]["RouterRole"]["Properties"]
    [policy] = role["Policies"]
    assert resolve(policy["PolicyDocument"], "my-group") == iam_policy("my-group")


SHELL_SCRIPTS = [
    *sorted((ROOT / "deploy").glob("*.sh")),
    *(
        ROOT / "scripts" / name
        for name in ("_venv.sh", "_redis.sh", "codepool", "install-code-server")
    ),
    *(ROOT / "scripts" / name for name in ("stress", "test")),
    ROOT / ".ci" / "run",
    ROOT / "bench" / "run",
]


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        need("shellcheck", "it is not installed (apt-get install shellcheck)")
    assert shellcheck is not None
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SHELL_SCRIPTS)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd's own checker, on a root holding systemd's units, ours, and a stand-in
    program at each ExecStart and ExecReload path (the real ones live on the provisioned
    machines). The router's unit is Type=notify with a watchdog and a reload."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need("systemd-analyze", "it is not installed (apt-get install systemd)")
    assert analyze is not None
    units = sorted((ROOT / "deploy" / "systemd").glob("*.s*"))
    assert {u.name for u in units} == {
        "codepool.service",
        "codepool.socket",
        "codepool-code-server.service",
    }
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, tmp_path / "etc/systemd/system" / unit.name)
        programs = re.findall(r"^Exec(?:Start|Reload)=(\S+)", unit.read_text(), re.MULTILINE)
        assert programs or unit.suffix == ".socket", unit
        for path in programs:
            program = tmp_path / path.lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", *(u.name for u in units)],
        capture_output=True,
        text=True,
    )
    ours = [line for line in result.stderr.splitlines() if "codepool" in line]
    assert result.returncode == 0 and not ours, result.stderr
    router = (ROOT / "deploy" / "systemd" / "codepool.service").read_text()
    for line in ("Type=notify", "NotifyAccess=all", "WatchdogSec=30", "ExecReload=/bin/kill -HUP"):
        assert f"\n{line}" in router, line
    assert "\nRequires=codepool.socket" in router  # the port is systemd's, held across restarts
    socket_unit = (ROOT / "deploy" / "systemd" / "codepool.socket").read_text()
    assert "\nListenStream=127.0.0.1:8000" in socket_unit and "\nReusePort=no" in socket_unit


@pytest.mark.timeout(300)
def test_provision_router_stages_the_units_and_a_closed_config(tmp_path: Path) -> None:
    """provision-router.sh --stage: the router's units (the service and the socket that
    holds its port) and a config the workspaces' accounts cannot read (it holds the
    store's password and the OIDC secret): 0640."""
    stage = tmp_path / "stage"
    done = subprocess.run(
        [str(ROOT / "deploy" / "provision-router.sh"), "--stage", str(stage)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    config = stage / "etc/codepool/config.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    for unit in ("codepool.service", "codepool.socket"):
        assert (stage / "etc/systemd/system" / unit).read_text() == (
            ROOT / "deploy/systemd" / unit
        ).read_text()
    assert (stage / "opt/codepool/venv/bin/codepool").exists()
