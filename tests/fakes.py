"""Named fakes for the core's plug points (jupyterhub's habit: fakes named for behaviour).

MemoryBackend keeps the AWS rules of docs/aws.md in memory and records every call, so the
core can be tested fast and the order of lifecycle calls asserted. Its boxes have no
process: readiness is answered by a tiny HTTP server shared by all of them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import replace

from codepool.core.errors import BackendError, NotASpare
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
from codepool.core.tls import WorkspaceTls


class MemoryBackend:
    """An in-memory group. Boxes are ready at once at `address` (a live test server)."""

    ready_path = "/healthz"
    tls: WorkspaceTls | None = None

    def __init__(self, address: str, min_size: int = 0, max_size: int = 10) -> None:
        self.address = address
        self.min_size = min_size
        self.max_size = max_size
        self.desired = min_size
        self.boxes: dict[str, Instance] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self._ids = itertools.count(1)
        self.now_ms = 0
        self.writes = 0

    def _in_service(self) -> int:
        return sum(1 for b in self.boxes.values() if b.lifecycle is Lifecycle.IN_SERVICE)

    async def fleet(self) -> Fleet:
        self.calls.append(("list", ()))
        return Fleet(list(self.boxes.values()), await self.capacity())

    async def list_instances(self) -> list[Instance]:
        return (await self.fleet()).instances

    async def capacity(self) -> Capacity:
        return Capacity(self.min_size, self.max_size, self.desired)

    async def set_desired(self, desired: int) -> None:
        self.calls.append(("set_desired", (str(desired),)))
        self.writes += 1
        if not self.min_size <= desired <= self.max_size:
            raise BackendError(f"desired {desired} outside [{self.min_size}, {self.max_size}]")
        self.desired = desired
        for _ in range(desired - self._in_service()):
            iid = f"i-{next(self._ids):04d}"
            self.boxes[iid] = Instance(
                iid, InstanceState.RUNNING, Lifecycle.IN_SERVICE, None, self.address, self.now_ms
            )

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Instance:
        self.calls.append(("claim", (instance_id, owner)))
        self.writes += 1
        box = self.boxes.get(instance_id)
        if box is None or not box.is_spare:
            raise NotASpare(f"{instance_id}: not an unowned running spare")
        self.boxes[instance_id] = box = replace(box, owner=owner)
        return box

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        self.calls.append(("stop", tuple(instance_ids)))
        self.writes += 1
        done = []
        for iid in instance_ids:
            box = self.boxes[iid]
            if box.lifecycle is Lifecycle.IN_SERVICE:
                self.desired -= 1
            self.boxes[iid] = replace(
                box,
                state=InstanceState.STOPPED,
                lifecycle=Lifecycle.STANDBY,
                stopped_at_ms=self.now_ms,
            )
            done.append(iid)
        return BatchResult(tuple(done))

    async def start(self, instance_id: str, seen: Instance | None = None) -> Instance:
        self.calls.append(("start", (instance_id,)))
        self.writes += 1
        box = self.boxes[instance_id]
        if box.lifecycle is Lifecycle.STANDBY:
            if self.desired + 1 > self.max_size:
                raise BackendError("ExitStandby would exceed max")
            self.desired += 1
        self.boxes[instance_id] = box = replace(
            box, state=InstanceState.RUNNING, lifecycle=Lifecycle.IN_SERVICE, stopped_at_ms=0
        )
        return box

    async def terminate(self, instance_ids: Sequence[str]) -> BatchResult:
        self.calls.append(("terminate", tuple(instance_ids)))
        self.writes += 1
        done = []
        for iid in instance_ids:
            box = self.boxes.pop(iid, None)
            if box is not None:
                if box.lifecycle is Lifecycle.IN_SERVICE:
                    self.desired -= 1
                done.append(iid)
        return BatchResult(tuple(done))

    async def label_spares(self, instance_ids: Sequence[str]) -> None:
        for iid in instance_ids:
            self.boxes[iid] = replace(self.boxes[iid], tagged=True)

    async def refuses(self, user: str) -> str:
        return ""  # every box is a machine of its own

    async def box_shape(self) -> BoxShape:
        return BoxShape("memory", 0)

    async def checks(self) -> list[Check]:
        return [Check("memory backend", True, "a test fake")]

    async def close(self) -> None:
        return None


class SlowBackend(MemoryBackend):
    """Every call takes `delay_s`: for timeouts and for interleaving concurrent callers."""

    def __init__(self, address: str, delay_s: float, **kw: int) -> None:
        super().__init__(address, **kw)
        self.delay_s = delay_s

    async def fleet(self) -> Fleet:
        await asyncio.sleep(self.delay_s)
        return await super().fleet()

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Instance:
        await asyncio.sleep(self.delay_s)
        return await super().claim(instance_id, owner, seen)


class BootingBackend(MemoryBackend):
    """Launched boxes are pending for `boot_s` before they run, as EC2 boxes are; records
    how many booted at once."""

    def __init__(self, address: str, boot_s: float, **kw: int) -> None:
        super().__init__(address, **kw)
        self.boot_s = boot_s
        self.peak_booting = 0

    async def set_desired(self, desired: int) -> None:
        before = set(self.boxes)
        await super().set_desired(desired)
        for iid in set(self.boxes) - before:
            self.boxes[iid] = replace(self.boxes[iid], state=InstanceState.PENDING)
            asyncio.get_running_loop().call_later(self.boot_s, self._booted, iid)
        booting = sum(1 for b in self.boxes.values() if b.state is InstanceState.PENDING)
        self.peak_booting = max(self.peak_booting, booting)

    def _booted(self, iid: str) -> None:
        if iid in self.boxes:
            self.boxes[iid] = replace(self.boxes[iid], state=InstanceState.RUNNING)


class NeverReadyBackend(MemoryBackend):
    """Launches boxes that never answer their ready path."""

    ready_path = "/never-ready"


class FailingStopBackend(MemoryBackend):
    """Stops fail for the listed instances (a partial batch failure, as AWS can answer)."""

    def __init__(self, address: str, fail: set[str], **kw: int) -> None:
        super().__init__(address, **kw)
        self.fail = fail

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        ok = [i for i in instance_ids if i not in self.fail]
        result = await super().stop(ok)
        return BatchResult(
            result.succeeded, {i: "injected failure" for i in instance_ids if i in self.fail}
        )


class OutageBackend(MemoryBackend):
    """Every call fails while `down` is set, as a throttled or unreachable cloud answers
    once botocore's retries are spent."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise BackendError("aws: ThrottlingException: Rate exceeded (injected)")

    async def fleet(self) -> Fleet:
        self._check()
        return await super().fleet()

    async def capacity(self) -> Capacity:
        self._check()
        return await super().capacity()

    async def set_desired(self, desired: int) -> None:
        self._check()
        await super().set_desired(desired)

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        self._check()
        return await super().stop(instance_ids)
