"""deploy/: the CloudFormation template passes cfn-lint and sets the group up the way the
aws backend needs it; its router policy is exactly what `codepool iam-policy` prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from codepool.core.backends.aws import iam_policy

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


def test_the_router_role_has_exactly_the_iam_policy() -> None:
    role = load()["Resources"]["RouterRole"]["Properties"]
    [policy] = role["Policies"]
    assert resolve(policy["PolicyDocument"], "my-group") == iam_policy("my-group")
