"""The AWS backend on moto: the whole lifecycle through the core, every call recorded and
checked against the rules real AWS enforces, the API-call budget of a large reap,
throttling and partial failures, and once over moto's real HTTP server."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from codepool.core.models import InstanceState, Lifecycle, ReapAction, Workspace, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.stores.sqlite import SQLiteStore
from tests.aws_fixtures import (
    GROUP,
    REGION,
    LoopbackAwsBackend,
    aws_settings,
    create_group,
    record,
)
from tests.conftest import make_settings
from tests.helpers import RouterServer, one_box_each
from tests.ports import free_port
from tests.test_pool import Clock

MIN = 60_000


@pytest.fixture
def clock() -> Clock:
    import time

    return Clock(int(time.time() * 1000))


@pytest.fixture
def backend(moto_aws: boto3.Session, ready_address: str) -> LoopbackAwsBackend:
    """Every call of every test is checked against AWS's rules when it is made."""
    aws = LoopbackAwsBackend(aws_settings(), ready_address, session=moto_aws)
    record(aws, moto_aws)
    return aws


@pytest.fixture
async def pool(
    tmp_path: Path, backend: LoopbackAwsBackend, clock: Clock
) -> AsyncIterator[CodePool]:
    """The pool; a scale an assignment left running ends before moto does."""
    settings = make_settings(tmp_path / "state", pool={"warm_spares": 1, "assign_timeout_s": 20})
    pool = CodePool(settings, SQLiteStore(str(tmp_path / "pool.db")), backend, clock=clock)
    yield pool
    await pool.scaled()


def owner_of(session: boto3.Session, iid: str) -> str:
    ec2 = session.client("ec2", region_name=REGION)
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return next(t["Value"] for t in inst["Tags"] if t["Key"] == "Owner")


async def test_lifecycle_on_moto(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session, clock: Clock
) -> None:
    calls = record(backend, moto_aws)
    a = await pool.assign("alice")
    iid = a.workspace.instance_id
    assert a.how == "launched" and owner_of(moto_aws, iid) == "alice"
    await pool.scaled()  # the warm spare comes back after the assignment returned
    cap = await backend.capacity()
    assert cap.desired == 2  # alice's box and a warm spare
    calls = record(backend, moto_aws)
    b = await pool.assign("bob")
    assert b.how == "spare"
    # One look at the group, then protect and tag the spare (11 calls before the look was
    # shared with the claim and the scale left the assignment's path).
    ops = [op for op, _ in calls.calls]
    assert ops == [
        "DescribeAutoScalingGroups",
        "DescribeInstances",
        "SetInstanceProtection",
        "CreateTags",
    ]
    await pool.scaled()
    assert (await backend.capacity()).desired == 3  # bob's spare replaced

    # Idle stop: standby with decrement, then stop; alice keeps her box (and her disk).
    clock.advance(6 * MIN)
    await pool.ping("bob", b.workspace.instance_id)
    decisions = {d.user: d for d in await pool.reap()}
    assert decisions["alice"].action is ReapAction.STOP and decisions["alice"].done
    assert "bob" not in decisions  # pinged: not even a candidate
    box = next(i for i in await backend.list_instances() if i.instance_id == iid)
    assert box.state is InstanceState.STOPPED and box.lifecycle is Lifecycle.STANDBY
    assert owner_of(moto_aws, iid) == "alice"
    ops = [op for op, _ in calls.calls]
    assert ops.index("EnterStandby") < ops.index("StopInstances")

    # Resume: start, wait running and healthy, then ExitStandby. The wait looks at this
    # box alone (one DescribeInstanceStatus a look), never at the whole group again.
    calls = record(backend, moto_aws)
    again = await pool.assign("alice")
    assert again.how == "resumed" and again.workspace.instance_id == iid
    ops = [op for op, _ in calls.calls]
    waiting = ops[ops.index("StartInstances") + 1 : ops.index("ExitStandby")]
    assert waiting and set(waiting) == {"DescribeInstanceStatus"}, ops
    # One look at the group, start, one look at the box's status, return to service, its
    # address: 15 calls before the wait looked at one box and the look was shared.
    assert calls.count() <= 6, ops
    box = next(i for i in await backend.list_instances() if i.instance_id == iid)
    assert box.lifecycle is Lifecycle.IN_SERVICE and box.state is InstanceState.RUNNING

    # Retention: a box stopped long ago is terminated.
    await pool.release("alice")
    clock.advance(31 * 86_400_000)
    await pool.ping("bob", b.workspace.instance_id)
    decisions = {d.user: d for d in await pool.reap()}
    assert decisions["alice"].action is ReapAction.TERMINATE and decisions["alice"].done
    assert iid not in {i.instance_id for i in await backend.list_instances()}

    # Losing the store loses nothing: reconcile rebuilds bob from the Owner tags.
    empty = CodePool(pool.settings, SQLiteStore(":memory:"), backend, clock=clock)
    await empty.reconcile()
    rebuilt = await empty.store.get_workspace("bob")
    assert rebuilt is not None and rebuilt.instance_id == b.workspace.instance_id
    assert rebuilt.state is WorkspaceState.RUNNING and rebuilt.last_seen_ms == clock.now
    assert calls.count() > 0  # every call above passed the recorder's checks


async def test_reaping_100_idle_workspaces_costs_calls_per_batch(
    moto_aws: boto3.Session, ready_address: str, tmp_path: Path, clock: Clock
) -> None:
    asg = moto_aws.client("autoscaling", region_name=REGION)
    asg.update_auto_scaling_group(AutoScalingGroupName=GROUP, MaxSize=120)
    backend = LoopbackAwsBackend(aws_settings(), ready_address, session=moto_aws)
    settings = make_settings(tmp_path / "state", pool={"warm_spares": 1})
    store = SQLiteStore(str(tmp_path / "pool.db"))
    pool = CodePool(settings, store, backend, clock=clock)
    await backend.set_desired(100)
    ec2 = moto_aws.client("ec2", region_name=REGION)
    for n, inst in enumerate(await backend.list_instances()):
        user = f"user{n:03d}"  # tagged directly: a hundred claims would only slow the test
        ec2.create_tags(Resources=[inst.instance_id], Tags=[{"Key": "Owner", "Value": user}])
        await store.put_workspace(
            Workspace(
                user, inst.instance_id, inst.address, WorkspaceState.RUNNING, clock.now, clock.now
            )
        )
    clock.advance(10 * MIN)
    calls = record(backend, moto_aws)
    decisions = await pool.reap()
    assert len(decisions) == 100 and all(d.done for d in decisions)
    by_op = {op: calls.count(op) for op in sorted(calls.operations())}
    print(f"\nreap of 100 idle workspaces + scale: {calls.count()} AWS calls {by_op}")
    assert calls.count("EnterStandby") == math.ceil(100 / 20)
    assert calls.count("StopInstances") == 1
    assert calls.count() <= 20  # versus at least 200 with a call per workspace and step
    stopped = [i for i in await backend.list_instances() if i.state is InstanceState.STOPPED]
    assert len(stopped) == 100 and all(i.owner for i in stopped)


async def test_throttling_is_retried(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session
) -> None:
    throttled: list[str] = []

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: Any) -> Any:
            yield self.body

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        if len(throttled) < 2:
            throttled.append(request.url)
            body = (
                b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                b"<Message>Rate exceeded</Message></Error><RequestId>1</RequestId></ErrorResponse>"
            )
            return AWSResponse(request.url, 400, HTTPHeaders(), Raw(body))
        return None

    events: Any = backend.asg.meta.events  # its stub wants handlers that return None
    events.register_first("before-send.auto-scaling.SetDesiredCapacity", throttle)
    await backend.set_desired(1)  # two throttles, then through
    assert len(throttled) == 2
    assert (await backend.capacity()).desired == 1


async def test_one_bad_instance_does_not_stop_the_batch(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session, clock: Clock
) -> None:
    users = ["ann", "ben", "cat"]
    ws = [(await pool.assign(u)).workspace for u in users]
    # ben's box leaves service behind codepool's back: EnterStandby refuses it.
    moto_aws.client("autoscaling", region_name=REGION).enter_standby(
        AutoScalingGroupName=GROUP,
        InstanceIds=[ws[1].instance_id],
        ShouldDecrementDesiredCapacity=True,
    )
    moto_aws.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[ws[1].instance_id])
    clock.advance(10 * MIN)
    decisions = {d.user: d for d in await pool.reap()}
    assert decisions["ann"].done and decisions["cat"].done
    assert not decisions["ben"].done and decisions["ben"].error
    actions = await pool.reconcile()  # and reconcile finishes the story
    assert ("clear", "ben") in [(a.kind, a.subject) for a in actions]


async def test_lifecycle_through_motos_http_server(
    moto_server: tuple[str, boto3.Session], ready_address: str, tmp_path: Path, clock: Clock
) -> None:
    endpoint, session = moto_server
    create_group(session, endpoint_url=endpoint)
    backend = LoopbackAwsBackend(
        aws_settings(endpoint_url=endpoint), ready_address, session=session
    )
    calls = record(backend, session)
    # the recorder's own checks must use the server too
    calls.checker_asg = session.client("autoscaling", endpoint_url=endpoint)
    calls.checker_ec2 = session.client("ec2", endpoint_url=endpoint)
    settings = make_settings(tmp_path / "state", pool={"warm_spares": 0})
    pool = CodePool(settings, SQLiteStore(str(tmp_path / "p.db")), backend, clock=clock)
    a = await pool.assign("alice")
    await pool.release("alice")
    b = await pool.assign("alice")
    assert b.how == "resumed" and b.workspace.instance_id == a.workspace.instance_id
    assert calls.count("StartInstances") == 1 and calls.count("ExitStandby") == 1


def test_aws_needs_a_group_name() -> None:
    from codepool.core.errors import ConfigError
    from codepool.core.settings import settings_from_mapping

    with pytest.raises(ConfigError, match=r"needs aws\.group_name"):
        settings_from_mapping({"pool": {"backend": "aws"}}, "f.toml")


async def test_iam_policy_covers_exactly_the_calls_made(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session
) -> None:
    from codepool.core.backends.aws import iam_policy

    calls = record(backend, moto_aws)
    await pool.assign("alice")
    await pool.release("alice")
    await pool.assign("alice")  # resume
    await pool.release("alice", terminate=True)
    await pool.reconcile()
    await pool.report(0, pool.clock())  # the admin page's usage figures
    granted = {a for st in iam_policy(GROUP)["Statement"] for a in st["Action"]}
    assert calls.iam_actions() == granted


def test_guardrail_commands_against_motos_server(
    moto_server: tuple[str, boto3.Session], tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from codepool.cli.app import app

    endpoint, session = moto_server
    ec2 = session.client("ec2", endpoint_url=endpoint)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    routers = ec2.create_security_group(GroupName="routers", Description="r", VpcId=vpc)
    boxes = ec2.create_security_group(GroupName="boxes", Description="b", VpcId=vpc)
    world: Any = [
        {
            "IpProtocol": "tcp",
            "FromPort": 8443,
            "ToPort": 8443,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        }
    ]
    ec2.authorize_security_group_ingress(GroupId=boxes["GroupId"], IpPermissions=world)
    create_group(session, endpoint_url=endpoint, security_group=boxes["GroupId"])
    config = tmp_path / "codepool.toml"

    def configure(budget: str = "25", notify: str = "ops@example.com") -> None:
        config.write_text(
            f'[pool]\nbackend = "aws"\n[aws]\ngroup_name = "{GROUP}"\nregion = "{REGION}"\n'
            f'endpoint_url = "{endpoint}"\n[local]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[cost]\ndaily_budget = {budget}\nbudget_notify = "{notify}"\n'
        )

    configure()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    runner = CliRunner(env=env)

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["--config", str(config), *args])

    result = cli("doctor", "--json")
    assert result.exit_code == 1, result.output
    found = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert found["scale-in protection"]["ok"] and found["Owner tag"]["ok"]
    assert not found["workspace port"]["ok"] and "0.0.0.0/0" in found["workspace port"]["detail"]
    ec2.revoke_security_group_ingress(GroupId=boxes["GroupId"], IpPermissions=world)
    result = cli("doctor", "--json")
    found = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert result.exit_code == 1 and "open to nobody" in found["workspace port"]["detail"]
    ec2.authorize_security_group_ingress(
        GroupId=boxes["GroupId"],
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8443,
                "ToPort": 8443,
                "UserIdGroupPairs": [{"GroupId": routers["GroupId"]}],
            }
        ],
    )
    result = cli("doctor", "--json")
    found = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert found["workspace port"]["ok"] and result.exit_code == 1  # guardrails missing
    for missing in ("alarms", "group metrics", "budget"):
        assert not found[missing]["ok"] and "alarms apply" in found[missing]["detail"], missing

    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["capacity"] == {
        "desired": 0,
        "max_size": 10,
        "min_size": 0,
    }

    result = cli("alarms", "apply", "--dry-run", "--json")
    assert result.exit_code == 0 and len(json.loads(result.output)["alarms"]) == 3
    cloudwatch = session.client("cloudwatch", endpoint_url=endpoint)
    budgets = session.client("budgets", endpoint_url=endpoint, region_name="us-east-1")
    account = session.client("sts", endpoint_url=endpoint).get_caller_identity()["Account"]
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert budgets.describe_budgets(AccountId=account).get("Budgets", []) == []
    result = cli("alarms", "apply", "--topic-arn", f"arn:aws:sns:{REGION}:123456789012:ops")
    assert result.exit_code == 0, result.output
    assert f"the budget codepool-{GROUP}: 25.00 USD a day" in result.output
    names = sorted(a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"])
    assert names == [f"codepool-{GROUP}-launch-lag", f"codepool-{GROUP}-near-max"]
    budget = budgets.describe_budget(AccountId=account, BudgetName=f"codepool-{GROUP}")["Budget"]
    assert budget["TimeUnit"] == "DAILY" and float(budget["BudgetLimit"]["Amount"]) == 25
    assert budget["CostFilters"] == {"TagKeyValue": [f"aws:autoscaling:groupName${GROUP}"]}
    told = budgets.describe_notifications_for_budget(
        AccountId=account, BudgetName=f"codepool-{GROUP}"
    )["Notifications"]
    assert sorted(n["NotificationType"] for n in told) == ["ACTUAL", "FORECASTED"]
    result = cli("doctor")
    assert result.exit_code == 0, result.output  # the full deployment passes
    configure(budget="30")  # the budget in the config changed: doctor says so, apply fixes it
    result = cli("doctor", "--json")
    found = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert result.exit_code == 1 and "differs" in found["budget"]["detail"]
    assert cli("alarms", "apply").exit_code == 0
    assert cli("doctor").exit_code == 0
    configure(notify="")
    result = cli("alarms", "apply")
    assert result.exit_code == 2 and "needs cost.budget_notify" in result.output

    result = cli("iam-policy")
    assert result.exit_code == 0
    policy = json.loads(result.output)
    assert policy["Statement"][1]["Resource"].endswith(f"autoScalingGroupName/{GROUP}")


async def test_reconcile_tags_boxes_without_an_owner(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session
) -> None:
    await backend.set_desired(1)
    [box] = await backend.list_instances()
    ec2 = moto_aws.client("ec2", region_name=REGION)
    ec2.delete_tags(Resources=[box.instance_id], Tags=[{"Key": "Owner"}])  # launched untagged
    actions = await pool.reconcile()
    assert ("tag-unassigned", box.instance_id) in [(a.kind, a.subject) for a in actions]
    assert owner_of(moto_aws, box.instance_id) == "UNASSIGNED"
    assert await pool.store.spares() == {box.instance_id}
    assert await pool.reconcile() == []


async def test_reconcile_finishes_a_stop_cut_short(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session
) -> None:
    """A router died between EnterStandby and StopInstances: the box runs in Standby and the
    store says stopping. Reconcile stops it, keeping owner and disk."""
    ws = (await pool.assign("alice")).workspace
    moto_aws.client("autoscaling", region_name=REGION).enter_standby(
        AutoScalingGroupName=GROUP,
        InstanceIds=[ws.instance_id],
        ShouldDecrementDesiredCapacity=True,
    )
    await pool.store.put_workspace(
        Workspace("alice", ws.instance_id, ws.address, WorkspaceState.STOPPING, 0, 0)
    )
    calls = record(backend, moto_aws)
    actions = await pool.reconcile()
    assert ("finish-stop", ws.instance_id) in [(a.kind, a.subject) for a in actions]
    box = next(i for i in await backend.list_instances() if i.instance_id == ws.instance_id)
    assert box.state is InstanceState.STOPPED and box.owner == "alice"
    assert calls.count("StopInstances") == 1 and calls.count("EnterStandby") == 0
    stored = await pool.store.get_workspace("alice")
    assert stored is not None and stored.state is WorkspaceState.STOPPED
    assert (await pool.assign("alice")).how == "resumed"


async def test_the_router_works_unchanged_on_aws(
    backend: LoopbackAwsBackend, moto_aws: boto3.Session, tmp_path: Path
) -> None:
    """Log in, dispatch, ping, get reaped by the leader loop, come back resumed: the same
    router code, now over the AWS backend on moto."""
    import asyncio

    from codepool.daemon.app import create_app
    from codepool.daemon.context import ROUTER
    from tests.router_fixtures import Client, add_test_accounts, dispatched, login

    port = free_port()
    settings = make_settings(
        tmp_path / "state",
        pool={"warm_spares": 1, "idle_timeout_s": 1},
        router={"public_url": f"http://127.0.0.1:{port}"},
    )
    pool = CodePool(settings, SQLiteStore(str(tmp_path / "pool.db")), backend)
    await add_test_accounts(pool.store)
    calls = record(backend, moto_aws)
    app = create_app(pool, settings, run_loops=False)
    server = RouterServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    c = Client(f"http://127.0.0.1:{port}")
    try:
        assert (await login(c, "alice", "alice-password")).status == 302
        await dispatched(c, "alice")
        home = f"http://alice.localhost:{port}"
        entered = await c.get(home + "/healthz", headers={"Accept": "text/html"})
        assert entered.status == 200 and entered.url.path == "/_codepool/enter"
        ping = home + "/_codepool/ping"
        ws = await pool.store.get_workspace("alice")
        assert ws is not None and owner_of(moto_aws, ws.instance_id) == "alice"
        resp = await c.post(ping, json={"instanceId": ws.instance_id})
        assert resp.status == 204
        await asyncio.sleep(1.2)
        assert await app[ROUTER].loops.cycle()  # the leader reaps the idle workspace
        stopped = await pool.store.get_workspace("alice")
        assert stopped is not None and stopped.state is WorkspaceState.STOPPED
        assert (await c.post(ping, json={"instanceId": ws.instance_id})).status == 409
        await dispatched(c, "alice")
        assert (await c.get(home + "/healthz")).status == 200
        again = await pool.store.get_workspace("alice")
        assert again is not None and again.instance_id == ws.instance_id
        assert again.state is WorkspaceState.RUNNING
        health = await (await c.get("/health")).json()
        assert health["checks"] == {"store": "ok", "backend": "ok"}
    finally:
        await c.close()
        await server.close()
    assert calls.count("ExitStandby") == 1 and calls.count("StopInstances") == 1
    await pool.close()


async def test_concurrent_assigns_on_aws_give_each_user_one_box(
    pool: CodePool, backend: LoopbackAwsBackend, moto_aws: boto3.Session
) -> None:
    import asyncio

    calls = record(backend, moto_aws)
    users = [f"dev{n}" for n in range(6)]
    boxes = one_box_each(await asyncio.gather(*(pool.assign(users[n % 6]) for n in range(24))))
    assert sorted(boxes) == sorted(users)
    owners = [i.owner for i in await backend.list_instances() if i.owner]
    assert sorted(owners) == sorted(users)  # nobody twice, no box with two owners
    assert calls.count("SetDesiredCapacity") <= 12  # about one ask per new user, plus scale


async def test_a_stopped_disk_is_never_given_to_another_user_on_aws(
    tmp_path: Path, moto_aws: boto3.Session, ready_address: str, clock: Clock
) -> None:
    from codepool.core.errors import PoolFull

    moto_aws.client("autoscaling", region_name=REGION).update_auto_scaling_group(
        AutoScalingGroupName=GROUP, MaxSize=2
    )
    backend = LoopbackAwsBackend(aws_settings(), ready_address, session=moto_aws)
    record(backend, moto_aws)
    settings = make_settings(tmp_path / "state", pool={"warm_spares": 0})
    store = SQLiteStore(str(tmp_path / "pool.db"))
    pool = CodePool(settings, store, backend, clock=clock)
    alice = (await pool.assign("alice")).workspace.instance_id
    await pool.release("alice")
    bob = (await pool.assign("bob")).workspace.instance_id
    assert bob != alice and owner_of(moto_aws, alice) == "alice"
    # The store forgets alice and even lists her box as a spare: still not carol's.
    await store.delete_workspace("alice", alice)
    await store.add_spares([alice])
    carol = (await pool.assign("carol")).workspace.instance_id
    assert carol not in (alice, bob) and owner_of(moto_aws, alice) == "alice"
    with pytest.raises(PoolFull):  # bob and carol fill the group of two
        await pool.assign("dave")


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_bad_workspace_ca_file_is_a_config_error_naming_the_key(
    tmp_path: Path, content: str | None
) -> None:
    from codepool.core.backends.aws import AwsBackend
    from codepool.core.errors import ConfigError

    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    with pytest.raises(ConfigError, match=r"aws\.workspace_ca_file = .*allowed: a readable PEM"):
        AwsBackend(aws_settings(workspace_ca_file=str(ca)), session=boto3.Session())
