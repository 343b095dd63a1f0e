"""moto fixtures for the AWS backend: a group set up the way docs/aws.md says (every box
protected from scale-in, Owner=UNASSIGNED propagated at launch), a recorder of every AWS
call that checks, at the moment of each call, the rules real AWS enforces and moto does
not, and a backend whose boxes answer on loopback (moto's addresses lead nowhere)."""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from codepool.core.backends.aws import AwsBackend
from codepool.core.settings import AwsSettings

REGION = "us-east-1"
GROUP = "codepool-workspaces"


def create_group(
    session: boto3.Session, max_size: int = 10, security_group: str = "", **kw: Any
) -> None:
    ec2 = session.client("ec2", region_name=REGION, **kw)
    asg = session.client("autoscaling", region_name=REGION, **kw)
    # Any AMI id will do: conftest turns off moto's catalogue of real AMIs (seconds a test).
    data: Any = {"ImageId": "ami-0c0de9001c0de9001", "InstanceType": "t3.medium"}
    if security_group:
        data["SecurityGroupIds"] = [security_group]
    ec2.create_launch_template(LaunchTemplateName="codepool-box", LaunchTemplateData=data)
    asg.create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        LaunchTemplate={"LaunchTemplateName": "codepool-box"},
        MinSize=0,
        MaxSize=max_size,
        DesiredCapacity=0,
        AvailabilityZones=[f"{REGION}a"],
        NewInstancesProtectedFromScaleIn=True,
        Tags=[
            {
                "Key": "Owner",
                "Value": "UNASSIGNED",
                "PropagateAtLaunch": True,
                "ResourceId": GROUP,
                "ResourceType": "auto-scaling-group",
            }
        ],
    )


@dataclass
class CallRecorder:
    """Every AWS call the backend makes, in order, checked against AWS's rules when made."""

    checker_asg: Any
    checker_ec2: Any
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    services: set[tuple[str, str]] = field(default_factory=set)

    def count(self, operation: str | None = None) -> int:
        return sum(1 for op, _ in self.calls if operation is None or op == operation)

    def operations(self) -> set[str]:
        return {op for op, _ in self.calls}

    def iam_actions(self) -> set[str]:
        """The IAM actions the recorded calls need (service prefix : operation)."""
        return {f"{svc}:{op}" for op, svc in self.services}

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        op = model.name
        self.calls.append((op, params))
        self.services.add((op, model.service_model.endpoint_prefix))
        ids = params.get("InstanceIds", [])
        if op in ("StopInstances", "TerminateInstances"):
            # A stopped or terminated InService box is replaced (and desired would be off).
            states = self._lifecycle(ids)
            bad = [i for i in ids if states.get(i) == "InService"]
            assert not bad, f"{op} on InService instances {bad}"
        if op == "ExitStandby":
            running = self._ec2_states(ids)
            bad = [i for i in ids if running.get(i) != "running"]
            assert not bad, f"ExitStandby on instances that are not running: {bad}"
        if op == "SetDesiredCapacity":
            group = self.checker_asg.describe_auto_scaling_groups(
                AutoScalingGroupNames=[params["AutoScalingGroupName"]]
            )["AutoScalingGroups"][0]
            assert params["DesiredCapacity"] <= group["MaxSize"], "desired above max"
            if params["DesiredCapacity"] < group["DesiredCapacity"]:
                self._assigned_are_protected(group)
        if op == "EnterStandby":
            group = self.checker_asg.describe_auto_scaling_groups(
                AutoScalingGroupNames=[params["AutoScalingGroupName"]]
            )["AutoScalingGroups"][0]
            self._assigned_are_protected(group)

    def _assigned_are_protected(self, group: dict[str, Any]) -> None:
        """Before desired can drop, no box that holds a user's work may be a scale-in victim."""
        ids = [i["InstanceId"] for i in group["Instances"]]
        owners = self._owners(ids)
        for inst in group["Instances"]:
            owner = owners.get(inst["InstanceId"], "UNASSIGNED")
            if owner != "UNASSIGNED" and inst["LifecycleState"] == "InService":
                assert inst["ProtectedFromScaleIn"], f"{inst['InstanceId']} of {owner} unprotected"

    def _lifecycle(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        found = self.checker_asg.describe_auto_scaling_instances(InstanceIds=ids)
        return {i["InstanceId"]: i["LifecycleState"] for i in found["AutoScalingInstances"]}

    def _ec2_states(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        found = self.checker_ec2.describe_instances(InstanceIds=ids)
        return {
            i["InstanceId"]: i["State"]["Name"]
            for r in found["Reservations"]
            for i in r["Instances"]
        }

    def _owners(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        found = self.checker_ec2.describe_instances(InstanceIds=ids)
        return {
            i["InstanceId"]: next(
                (t["Value"] for t in i.get("Tags", []) if t["Key"] == "Owner"), ""
            )
            for r in found["Reservations"]
            for i in r["Instances"]
        }


class LoopbackAwsBackend(AwsBackend):
    """The real AWS backend, except that every box answers at one loopback address: moto's
    boxes have made-up private addresses that lead nowhere (and must not be dialled)."""

    def __init__(self, settings: AwsSettings, loopback: str, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.loopback = loopback

    def _address(self, ec2_instance: Any) -> str:
        return self.loopback


@functools.cache
def aws_session() -> boto3.Session:
    """One boto3 session for the whole test process: a session parses each service's model
    anew (EC2's alone takes a good part of a second), and every AWS test makes several
    clients. The clients are made inside each test's mock, so moto answers them."""
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )


@pytest.fixture
def moto_server() -> Iterator[tuple[str, boto3.Session]]:
    """moto's real HTTP server on a loopback port: (endpoint URL, a session for it)."""
    from moto.server import ThreadedMotoServer

    from tests.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        # moto keeps its state per process: start from an empty AWS whatever ran before.
        endpoint = f"http://127.0.0.1:{port}"
        reset = urllib.request.Request(endpoint + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(reset, timeout=10):
            pass
        yield endpoint, aws_session()
    finally:
        server.stop()


def aws_settings(**kw: Any) -> AwsSettings:
    return AwsSettings(group_name=GROUP, region=REGION, wait_timeout_s=10, **kw)


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    """An in-process moto AWS with the workspace group created."""
    from moto import mock_aws

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        session = aws_session()
        create_group(session)
        yield session


def record(backend: AwsBackend, session: boto3.Session) -> CallRecorder:
    """Attach a recorder to the backend's own clients (the checker's calls are not counted).
    A backend has one recorder: asking again starts its count afresh, its checks go on."""
    existing: CallRecorder | None = getattr(backend, "recorder", None)
    if existing is not None:
        existing.calls.clear()
        existing.services.clear()
        return existing
    recorder = CallRecorder(
        session.client("autoscaling", region_name=REGION), session.client("ec2", region_name=REGION)
    )
    # before-parameter-build sees the API parameters, once per call (not per retry).
    backend.asg.meta.events.register("before-parameter-build.*.*", recorder)
    backend.ec2.meta.events.register("before-parameter-build.*.*", recorder)
    backend.recorder = recorder  # type: ignore[attr-defined]
    return recorder
