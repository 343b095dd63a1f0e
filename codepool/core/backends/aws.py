"""The `aws` backend: an Auto Scaling Group of workspace boxes, driven the way AWS
documents as safe (docs/aws.md).

- Every box is protected from scale-in, so lowering desired capacity never picks a
  victim; boxes leave only by the calls below.
- Idle stop: EnterStandby (desired - 1), wait for Standby, then StopInstances. A stopped
  InService box would fail its health check and be replaced, losing its disk.
- Resume: StartInstances, wait running and status ok, then ExitStandby (desired + 1).
- Terminate: EnterStandby for boxes in service (desired - 1), then TerminateInstances;
  batched, unlike TerminateInstanceInAutoScalingGroup, which takes one id per call.
- Calls that take lists are batched within AWS limits; per-instance failures are
  reported, never hidden, and a batch that fails as a whole is retried one by one so
  one bad box does not stop the others. botocore retries throttling (standard mode).

boto3 is imported here only, and its blocking calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from codepool.core.errors import BackendError, InvalidInput, NotASpare
from codepool.core.models import (
    BatchResult,
    BoxShape,
    Capacity,
    Check,
    Fleet,
    Instance,
    InstanceState,
    Lifecycle,
)
from codepool.core.settings import AwsSettings, CostSettings
from codepool.core.tls import WorkspaceTls, workspace_tls

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef
    from mypy_boto3_ec2.type_defs import InstanceTypeDef

T = TypeVar("T")

UNASSIGNED = "UNASSIGNED"
OWNER_TAG = "Owner"
STANDBY_BATCH = 20  # EnterStandby / ExitStandby take at most 20 ids
EC2_BATCH = 500  # Stop/Start/TerminateInstances and CreateTags take many; keep calls modest
POLL_S = 2.0

_LIFECYCLE = {
    "InService": Lifecycle.IN_SERVICE,
    "Standby": Lifecycle.STANDBY,
    "EnteringStandby": Lifecycle.STANDBY,
    "Pending": Lifecycle.PENDING,
    "Pending:Wait": Lifecycle.PENDING,
    "Pending:Proceed": Lifecycle.PENDING,
}
_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED,
    "shutting-down": InstanceState.TERMINATED,
    "terminated": InstanceState.TERMINATED,
}
_STOP_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _stopped_at_ms(reason: str) -> int:
    """EC2 says when a box stopped only in words: 'User initiated (2026-11-27 10:00:00 GMT)'."""
    m = _STOP_TIME.search(reason or "")
    if m is None:
        return 0
    return int(time.mktime(time.strptime(m.group(1) + " UTC", "%Y-%m-%d %H:%M:%S %Z")) * 1000)


def _fresh_spare(seen: Instance | None, instance_id: str) -> bool:
    """Whether a look this operation has just taken shows the box as a running spare:
    then claiming it needs no second look (the store's claim keeps others off it)."""
    return seen is not None and seen.instance_id == instance_id and seen.is_spare


def _why(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(exc)


class AwsBackend:
    """An Auto Scaling Group as a pool of workspace boxes."""

    def __init__(
        self,
        settings: AwsSettings,
        session: boto3.Session | None = None,
        cost: CostSettings | None = None,
    ) -> None:
        self.settings = settings
        self.cost = cost or CostSettings()
        self.group = settings.group_name
        self.ready_path = settings.ready_path
        self.tls: WorkspaceTls | None = workspace_tls(
            settings.workspace_ca_file, settings.workspace_tls_name
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=5,
            read_timeout=30,
        )
        session = session or boto3.Session()
        kwargs: dict[str, Any] = {"config": config}
        if settings.region:
            kwargs["region_name"] = settings.region
        if settings.endpoint_url:
            kwargs["endpoint_url"] = settings.endpoint_url
        try:
            self.asg = session.client("autoscaling", **kwargs)
            self.ec2 = session.client("ec2", **kwargs)
            self.cloudwatch = session.client("cloudwatch", **kwargs)
            self.sts = session.client("sts", **kwargs)
            # Budgets is one global endpoint, in us-east-1.
            self.budgets = session.client("budgets", **{"region_name": "us-east-1", **kwargs})
        except BotoCoreError as exc:
            raise BackendError(f"aws: cannot make a client: {exc}") from None
        self.writes = 0
        self._counting = threading.Lock()  # calls run in worker threads
        for client in (self.asg, self.ec2):
            client.meta.events.register("before-call.*.*", self._count_write)

    def _count_write(self, model: Any, **_: Any) -> None:
        """Every call that is not a read is a change (whoever made it: a retried batch,
        a terminate, a tag): a look older than it is no longer shared."""
        if not model.name.startswith(("Describe", "Get", "List")):
            with self._counting:
                self.writes += 1

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking boto3 work in a thread; AWS errors become BackendErrors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (ClientError, BotoCoreError) as exc:
            raise BackendError(f"aws: {_why(exc)}") from None

    def _group(self) -> AutoScalingGroupTypeDef:
        groups = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        if not groups["AutoScalingGroups"]:
            raise BackendError(f"aws: no Auto Scaling Group named {self.group!r}")
        return groups["AutoScalingGroups"][0]

    def _address(self, ec2_instance: InstanceTypeDef) -> str:
        """The base URL the router dials for a box."""
        s = self.settings
        key = "PrivateIpAddress" if s.address == "private" else "PublicIpAddress"
        ip = ec2_instance.get(key, "")
        return f"{s.workspace_scheme}://{ip}:{s.workspace_port}" if ip else ""

    def _describe(self, ids: Iterable[str] | None = None) -> list[InstanceTypeDef]:
        """EC2's view of the group's boxes (all of them, or these ids), paged."""
        paginator = self.ec2.get_paginator("describe_instances")
        if ids is None:
            pages = paginator.paginate(
                Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": [self.group]}]
            )
        else:
            pages = paginator.paginate(InstanceIds=list(ids))
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _fleet(self) -> Fleet:
        group = self._group()
        lifecycle = {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}
        found = []
        for i in self._describe():
            state = _STATES.get(i["State"]["Name"], InstanceState.TERMINATED)
            stage = _LIFECYCLE.get(lifecycle.get(i["InstanceId"], ""))
            if state is InstanceState.TERMINATED or stage is None:
                continue  # terminating, detached or gone: not part of the pool
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            owner = tags.get(OWNER_TAG)
            found.append(
                Instance(
                    instance_id=i["InstanceId"],
                    state=state,
                    lifecycle=stage,
                    owner=None if owner in (None, UNASSIGNED) else owner,
                    address=self._address(i),
                    launched_at_ms=_ms(i["LaunchTime"]),
                    stopped_at_ms=_stopped_at_ms(i.get("StateTransitionReason", ""))
                    if state is InstanceState.STOPPED
                    else 0,
                    tagged=OWNER_TAG in tags,
                )
            )
        capacity = Capacity(group["MinSize"], group["MaxSize"], group["DesiredCapacity"])
        return Fleet(found, capacity)

    def _instances(self) -> list[Instance]:
        return self._fleet().instances

    def _box(self, instance_id: str) -> Instance | None:
        return next((i for i in self._instances() if i.instance_id == instance_id), None)

    def _wait(self, ids: Sequence[str], done: Callable[[list[Instance]], bool], what: str) -> None:
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while True:
            boxes = [i for i in self._instances() if i.instance_id in ids]
            if done(boxes):
                return
            if time.monotonic() > deadline:
                raise BackendError(f"aws: {', '.join(ids)} did not {what} in time")
            time.sleep(POLL_S)

    # -- the protocol ---------------------------------------------------------------------

    async def fleet(self) -> Fleet:
        return await self._call(self._fleet)

    async def list_instances(self) -> list[Instance]:
        return await self._call(self._instances)

    async def capacity(self) -> Capacity:
        def run() -> Capacity:
            g = self._group()
            return Capacity(g["MinSize"], g["MaxSize"], g["DesiredCapacity"])

        return await self._call(run)

    async def set_desired(self, desired: int) -> None:
        # No look at the group first: AWS refuses a value outside [min, max] itself
        # (ValidationError, which says so), and the callers have just read the limits.
        def run() -> None:
            self.asg.set_desired_capacity(
                AutoScalingGroupName=self.group, DesiredCapacity=desired, HonorCooldown=False
            )

        await self._call(run)

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Instance:
        def run() -> Instance:
            box = seen if _fresh_spare(seen, instance_id) else self._box(instance_id)
            if box is None or not box.is_spare or box.state is not InstanceState.RUNNING:
                raise NotASpare(f"{instance_id}: not an unowned running spare")
            # Protected first: from here on no scale-in can pick this box.
            self.asg.set_instance_protection(
                AutoScalingGroupName=self.group,
                InstanceIds=[instance_id],
                ProtectedFromScaleIn=True,
            )
            self.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": OWNER_TAG, "Value": owner}])
            return Instance(
                box.instance_id, box.state, box.lifecycle, owner, box.address, box.launched_at_ms
            )

        return await self._call(run)

    def _enter_standby(self, ids: Sequence[str], failed: dict[str, str]) -> list[str]:
        """Take boxes out of service (desired drops by one each), 20 per call; a batch that
        AWS refuses as a whole is retried one by one. Returns the ids now leaving service."""
        left: list[str] = []
        for batch in batches(ids, STANDBY_BATCH):
            try:
                self.asg.enter_standby(
                    AutoScalingGroupName=self.group,
                    InstanceIds=batch,
                    ShouldDecrementDesiredCapacity=True,
                )
                left += batch
            except ClientError:
                for iid in batch:
                    try:
                        self.asg.enter_standby(
                            AutoScalingGroupName=self.group,
                            InstanceIds=[iid],
                            ShouldDecrementDesiredCapacity=True,
                        )
                        left.append(iid)
                    except ClientError as exc:
                        failed[iid] = _why(exc)
        return left

    def _ec2_each(
        self, call: Callable[..., Any], ids: Sequence[str], failed: dict[str, str]
    ) -> list[str]:
        """An EC2 call over many ids in batches; a refused batch is retried one by one."""
        done: list[str] = []
        for batch in batches(ids, EC2_BATCH):
            try:
                call(InstanceIds=batch)
                done += batch
            except ClientError:
                for iid in batch:
                    try:
                        call(InstanceIds=[iid])
                        done.append(iid)
                    except ClientError as exc:
                        failed[iid] = _why(exc)
        return done

    def _out_of_service(self, ids: Sequence[str], failed: dict[str, str]) -> list[str]:
        """Make sure boxes are in Standby (entering it where they are in service), so that
        stopping or terminating them cannot trigger a replacement or move desired twice."""
        boxes = {i.instance_id: i for i in self._instances()}
        for iid in ids:
            if iid not in boxes:
                failed[iid] = "not in the group"
        serving = [i for i in ids if i in boxes and boxes[i].lifecycle is not Lifecycle.STANDBY]
        ready = [i for i in ids if i in boxes and boxes[i].lifecycle is Lifecycle.STANDBY]
        entering = self._enter_standby(serving, failed)
        if entering:
            self._wait(
                entering,
                lambda bs: all(b.lifecycle is Lifecycle.STANDBY for b in bs),
                "enter Standby",
            )
        return ready + entering

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        return await self._leave_service_then(self.ec2.stop_instances, instance_ids)

    async def _leave_service_then(
        self, ec2_call: Callable[..., Any], instance_ids: Sequence[str]
    ) -> BatchResult:
        """Standby first (so the group never replaces the box), then the EC2 call, batched."""

        def run() -> BatchResult:
            failed: dict[str, str] = {}
            standby = self._out_of_service(instance_ids, failed)
            done = self._ec2_each(ec2_call, standby, failed)
            return BatchResult(tuple(done), failed)

        return await self._call(run)

    async def start(self, instance_id: str, seen: Instance | None = None) -> Instance:
        def run() -> Instance:
            fresh = seen is not None and seen.instance_id == instance_id
            box = seen if fresh else self._box(instance_id)
            if box is None:
                raise BackendError(f"{instance_id}: not in the group")
            if box.state is not InstanceState.RUNNING:
                self.ec2.start_instances(InstanceIds=[instance_id])
                self._wait_running_ok(instance_id)
            lifecycle = box.lifecycle
            if box.lifecycle is Lifecycle.STANDBY:
                # Only now, running and healthy, may it count again: ExitStandby (desired + 1).
                self.asg.exit_standby(AutoScalingGroupName=self.group, InstanceIds=[instance_id])
                lifecycle = Lifecycle.IN_SERVICE
            # Its address may have changed with the start (a public one does): this box
            # alone, not the whole group again.
            [ec2_box] = self._describe([instance_id])
            return replace(
                box,
                state=InstanceState.RUNNING,
                lifecycle=lifecycle,
                address=self._address(ec2_box),
            )

        return await self._call(run)

    def _wait_running_ok(self, instance_id: str) -> None:
        """Until the box runs and passes its status checks: one call per look, on this box
        alone (not the whole group)."""
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while True:
            statuses = self.ec2.describe_instance_status(
                InstanceIds=[instance_id], IncludeAllInstances=True
            )
            ok = [
                s
                for s in statuses["InstanceStatuses"]
                if s["InstanceState"]["Name"] == "running"
                and s["InstanceStatus"]["Status"] in ("ok", "not-applicable")
            ]
            if ok:
                return
            if time.monotonic() > deadline:
                raise BackendError(f"aws: {instance_id} did not start and pass its checks in time")
            time.sleep(POLL_S)

    async def terminate(self, instance_ids: Sequence[str]) -> BatchResult:
        return await self._leave_service_then(self.ec2.terminate_instances, instance_ids)

    async def label_spares(self, instance_ids: Sequence[str]) -> None:
        def run() -> None:
            for batch in batches(instance_ids, EC2_BATCH):
                self.ec2.create_tags(
                    Resources=batch, Tags=[{"Key": OWNER_TAG, "Value": UNASSIGNED}]
                )

        await self._call(run)

    async def refuses(self, user: str) -> str:
        return ""  # every box is a machine of its own

    async def checks(self) -> list[Check]:
        """The group is set up the way docs/aws.md says, and only routers reach boxes."""

        def run() -> list[Check]:
            g = self._group()
            found = [
                Check(
                    "scale-in protection",
                    bool(g.get("NewInstancesProtectedFromScaleIn")),
                    "NewInstancesProtectedFromScaleIn is on"
                    if g.get("NewInstancesProtectedFromScaleIn")
                    else "turn on NewInstancesProtectedFromScaleIn, or AWS may terminate a "
                    "box with someone's work when desired drops",
                ),
            ]
            tag = next((t for t in g.get("Tags", []) if t["Key"] == OWNER_TAG), None)
            tag_ok = tag is not None and tag["Value"] == UNASSIGNED and tag["PropagateAtLaunch"]
            found.append(
                Check(
                    "Owner tag",
                    tag_ok,
                    "Owner=UNASSIGNED propagates at launch"
                    if tag_ok
                    else "add the group tag Owner=UNASSIGNED with PropagateAtLaunch",
                )
            )
            found.append(
                Check(
                    "max size",
                    g["MaxSize"] >= 2,
                    f"MaxSize {g['MaxSize']}" + ("" if g["MaxSize"] >= 2 else ": must be >= 2"),
                )
            )
            found.append(self._port_check(g))
            return found + self._guardrails(g)

        return await self._call(run)

    def _template(self, group: AutoScalingGroupTypeDef) -> dict[str, Any] | None:
        """The data of the launch template the group launches boxes with (None: none)."""
        template = group.get("LaunchTemplate") or (
            group.get("MixedInstancesPolicy", {})
            .get("LaunchTemplate", {})
            .get("LaunchTemplateSpecification")
        )
        if not template:
            return None
        version = [template.get("Version") or "$Default"]
        if "LaunchTemplateId" in template:
            answer = self.ec2.describe_launch_template_versions(
                LaunchTemplateId=template["LaunchTemplateId"], Versions=version
            )
        else:
            answer = self.ec2.describe_launch_template_versions(
                LaunchTemplateName=template.get("LaunchTemplateName", ""), Versions=version
            )
        versions = answer["LaunchTemplateVersions"]
        return dict(versions[0]["LaunchTemplateData"]) if versions else {}

    async def box_shape(self) -> BoxShape:
        """The instance type and disk size the group's launch template gives a box."""

        def run() -> BoxShape:
            group = self._group()
            data = self._template(group) or {}
            kind = data.get("InstanceType", "")
            overrides = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
            for override in overrides.get("Overrides", []):
                kind = kind or override.get("InstanceType", "")
            disks = [
                m.get("Ebs", {}).get("VolumeSize", 0) for m in data.get("BlockDeviceMappings", [])
            ]
            return BoxShape(kind, sum(disks))

        return await self._call(run)

    def _port_check(self, group: AutoScalingGroupTypeDef) -> Check:
        """The workspace port must be open to security groups only (the routers'), never to
        address ranges: people reach workspaces through the router or not at all."""
        port = self.settings.workspace_port
        data = self._template(group)
        if data is None:
            return Check("workspace port", False, "the group has no launch template to inspect")
        sg_ids = list(data.get("SecurityGroupIds", []))
        for nic in data.get("NetworkInterfaces", []):
            sg_ids += nic.get("Groups", [])
        if not sg_ids:
            return Check("workspace port", False, "the launch template names no security group")
        open_to: list[str] = []
        groups: list[str] = []
        for sg in self.ec2.describe_security_groups(GroupIds=sg_ids)["SecurityGroups"]:
            for rule in sg.get("IpPermissions", []):
                proto = rule.get("IpProtocol")
                lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
                if proto == "-1" or (proto == "tcp" and lo <= port <= hi):
                    open_to += [r["CidrIp"] for r in rule.get("IpRanges", [])]
                    open_to += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
                    groups += [g.get("GroupId", "") for g in rule.get("UserIdGroupPairs", [])]
        if open_to:
            return Check(
                "workspace port",
                False,
                f"port {port} is open to {', '.join(sorted(set(open_to)))}: allow only the "
                "routers' security group",
            )
        if not groups:
            return Check(
                "workspace port",
                False,
                f"port {port} is open to nobody: the routers cannot reach the boxes; allow "
                "the routers' security group (or set aws.workspace_port to the port boxes serve)",
            )
        return Check(
            "workspace port",
            True,
            f"port {port} is open to security groups only: {', '.join(groups)}",
        )

    async def apply_alarms(self, topic_arn: str, dry_run: bool) -> list[dict[str, Any]]:
        """Turn on the group metrics the alarms read, create or update both alarms, and
        the daily cost budget when cost.daily_budget is set."""
        alarms = alarm_definitions(self.group, topic_arn)
        budget = budget_definition(self.group, self.cost) if self.cost.daily_budget else None
        if dry_run:
            return [*alarms, *([budget] if budget else [])]

        def run() -> None:
            self.asg.enable_metrics_collection(
                AutoScalingGroupName=self.group, Granularity="1Minute", Metrics=GROUP_METRICS
            )
            for alarm in alarms:
                self.cloudwatch.put_metric_alarm(**alarm)
            if budget is not None:
                self._put_budget(budget)

        await self._call(run)
        return [*alarms, *([budget] if budget else [])]

    def _put_budget(self, budget: dict[str, Any]) -> None:
        """Create the budget, or make it again when it differs (Budgets has no put; its
        update cannot change notifications in the same call)."""
        account = self.sts.get_caller_identity()["Account"]
        name = budget["Budget"]["BudgetName"]
        current = self._budget(account, name)
        if current is not None:
            if _same_budget(current, budget["Budget"]):
                return
            self.budgets.delete_budget(AccountId=account, BudgetName=name)
        self.budgets.create_budget(AccountId=account, **budget)

    def _budget(self, account: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.budgets.describe_budget(AccountId=account, BudgetName=name)["Budget"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NotFoundException":
                return None
            raise

    def _guardrails(self, group: AutoScalingGroupTypeDef) -> list[Check]:
        """The alarms, the metrics they read, and the daily budget exist."""
        names = [a["AlarmName"] for a in alarm_definitions(self.group)]
        found = {
            a["AlarmName"]
            for a in self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
        }
        missing = [n for n in names if n not in found]
        checks = [
            Check(
                "alarms",
                not missing,
                "both capacity alarms exist"
                if not missing
                else f"missing {', '.join(missing)}: run `codepool alarms apply`",
            )
        ]
        enabled = {m["Metric"] for m in group.get("EnabledMetrics", [])}
        off = [m for m in GROUP_METRICS if m not in enabled]
        checks.append(
            Check(
                "group metrics",
                not off,
                "the alarms' metrics are collected"
                if not off
                else f"{', '.join(off)} not collected: run `codepool alarms apply`",
            )
        )
        checks.append(self._budget_check())
        return checks

    def _budget_check(self) -> Check:
        apply = "run `codepool alarms apply`"
        if not self.cost.daily_budget:
            return Check(
                "budget",
                False,
                f"no daily budget: set cost.daily_budget and budget_notify, {apply}",
            )
        want = budget_definition(self.group, self.cost)["Budget"]
        name = want["BudgetName"]
        current = self._budget(self.sts.get_caller_identity()["Account"], name)
        if current is None:
            return Check("budget", False, f"{name} does not exist: {apply}")
        if not _same_budget(current, want):
            return Check("budget", False, f"{name} differs from cost.daily_budget: {apply}")
        return Check(
            "budget", True, f"{name}: {self.cost.daily_budget:g} {self.cost.currency} a day"
        )

    async def close(self) -> None:
        return None


# -- guardrails: the IAM policy, the CloudWatch alarms, and the doctor's checks -------------

ROUTER_ACTIONS = {
    # Read: what the group and its boxes look like (no resource-level control in AWS).
    "read": [
        "autoscaling:DescribeAutoScalingGroups",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceStatus",
        # the launch template's instance type and disk size, for the usage report
        "ec2:DescribeLaunchTemplateVersions",
    ],
    # The group's own calls, limited to this group.
    "group": [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:SetInstanceProtection",
        "autoscaling:EnterStandby",
        "autoscaling:ExitStandby",
    ],
    # Box calls, limited to boxes tagged as members of this group.
    "boxes": ["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"],
    "tags": ["ec2:CreateTags"],
}


def iam_policy(group: str) -> dict[str, Any]:
    """The least-privilege policy a router needs for one group (docs/aws.md)."""
    member = {"StringEquals": {"aws:ResourceTag/aws:autoscaling:groupName": group}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadThePool",
                "Effect": "Allow",
                "Action": ROUTER_ACTIONS["read"],
                "Resource": "*",
            },
            {
                "Sid": "DriveTheGroup",
                "Effect": "Allow",
                "Action": ROUTER_ACTIONS["group"],
                "Resource": "arn:aws:autoscaling:*:*:autoScalingGroup:*:"
                f"autoScalingGroupName/{group}",
            },
            {
                "Sid": "StartStopTerminateItsBoxes",
                "Effect": "Allow",
                "Action": ROUTER_ACTIONS["boxes"],
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": member,
            },
            {
                "Sid": "TagOwnersOfItsBoxes",
                "Effect": "Allow",
                "Action": ROUTER_ACTIONS["tags"],
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {
                    **member,
                    "ForAllValues:StringEquals": {"aws:TagKeys": [OWNER_TAG]},
                },
            },
        ],
    }


GROUP_METRICS = ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupMaxSize"]


def budget_definition(group: str, cost: CostSettings) -> dict[str, Any]:
    """CreateBudget's arguments (without the account): a daily cost budget for the boxes of
    the group (by the cost allocation tag AWS puts on them), telling cost.budget_notify
    when the day's actual cost passes it, and when the forecast does."""
    notify = cost.budget_notify
    if not notify:
        raise InvalidInput(
            "cost.daily_budget needs cost.budget_notify: an e-mail address or an SNS topic ARN"
        )
    kind = "SNS" if notify.startswith("arn:") else "EMAIL"
    subscribers = [{"SubscriptionType": kind, "Address": notify}]

    def when(kind: str) -> dict[str, Any]:
        return {
            "Notification": {
                "NotificationType": kind,
                "ComparisonOperator": "GREATER_THAN",
                "Threshold": 100.0,
                "ThresholdType": "PERCENTAGE",
            },
            "Subscribers": subscribers,
        }

    return {
        "Budget": {
            "BudgetName": f"codepool-{group}",
            "BudgetLimit": {"Amount": f"{cost.daily_budget:.2f}", "Unit": cost.currency},
            "TimeUnit": "DAILY",
            "BudgetType": "COST",
            # Activate the aws:autoscaling:groupName cost allocation tag in the Billing
            # console: until then, the budget counts nothing.
            "CostFilters": {"TagKeyValue": [f"aws:autoscaling:groupName${group}"]},
        },
        "NotificationsWithSubscribers": [when("ACTUAL"), when("FORECASTED")],
    }


def _same_budget(current: dict[str, Any], want: dict[str, Any]) -> bool:
    limit, wanted = current.get("BudgetLimit", {}), want["BudgetLimit"]
    return (
        float(limit.get("Amount", -1)) == float(wanted["Amount"])
        and limit.get("Unit") == wanted["Unit"]
        and current.get("CostFilters") == want["CostFilters"]
    )


def alarm_definitions(group: str, topic_arn: str = "") -> list[dict[str, Any]]:
    """The two capacity alarms (docs/aws.md) as PutMetricAlarm arguments."""
    dims = [{"Name": "AutoScalingGroupName", "Value": group}]

    def metric(mid: str, name: str) -> dict[str, Any]:
        return {
            "Id": mid,
            "ReturnData": False,
            "MetricStat": {
                "Metric": {"Namespace": "AWS/AutoScaling", "MetricName": name, "Dimensions": dims},
                "Period": 60,
                "Stat": "Maximum",
            },
        }

    actions = {"AlarmActions": [topic_arn], "OKActions": [topic_arn]} if topic_arn else {}
    return [
        {
            "AlarmName": f"codepool-{group}-near-max",
            "AlarmDescription": "Desired capacity is at or above 90% of the group's maximum: "
            "new users may soon get 'pool full'.",
            "Metrics": [
                metric("desired", "GroupDesiredCapacity"),
                metric("max", "GroupMaxSize"),
                {"Id": "ratio", "Expression": "100 * desired / max", "ReturnData": True},
            ],
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "Threshold": 90.0,
            "EvaluationPeriods": 1,
            "TreatMissingData": "notBreaching",
            **actions,
        },
        {
            "AlarmName": f"codepool-{group}-launch-lag",
            "AlarmDescription": "Desired capacity has exceeded the boxes in service for 10 "
            "minutes: boxes are failing to launch or to pass health checks.",
            "Metrics": [
                metric("desired", "GroupDesiredCapacity"),
                metric("inservice", "GroupInServiceInstances"),
                {"Id": "lag", "Expression": "desired - inservice", "ReturnData": True},
            ],
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "Threshold": 1.0,
            "EvaluationPeriods": 10,
            "DatapointsToAlarm": 10,
            "TreatMissingData": "notBreaching",
            **actions,
        },
    ]
