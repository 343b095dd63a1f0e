"""The Backend plug point: where boxes live and the durable truth about them.

The protocol follows the AWS lifecycle (docs/aws.md) so that every backend, the local
one included, behaves the same way: spares launch when desired capacity rises, an
idle stop leaves service before it stops, a resume returns to service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from codepool.core.errors import ConfigError
from codepool.core.models import BatchResult, BoxShape, Capacity, Check, Fleet, Instance
from codepool.core.settings import Settings
from codepool.core.tls import WorkspaceTls


class Backend(Protocol):
    """What the core needs from a pool of boxes."""

    ready_path: str  # HTTP path on a box's address that answers 200 once it serves
    tls: WorkspaceTls | None  # how https boxes are verified (None: the system's CAs)
    # How many changes this backend has asked for so far: a look taken when the count was
    # what it is now has seen every change this process made (the pool shares it then).
    writes: int

    async def fleet(self) -> Fleet:
        """One look at every box of the pool that is not terminated (spares, running and
        stopped ones) and at the group's capacity."""

    async def list_instances(self) -> list[Instance]:
        """The boxes of fleet() alone."""

    async def capacity(self) -> Capacity:
        """The group's min, max and desired capacity."""

    async def set_desired(self, desired: int) -> None:
        """Ask for this many in-service boxes; missing ones launch as unowned spares.
        Lowering it terminates nothing (every box is protected from scale-in)."""

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Instance:
        """Tag an unowned running box with its owner and protect it.
        Raise NotASpare if it is not (or no longer) an unowned running box. seen: the box
        as this operation has just read it, a running spare (trusted instead of a look)."""

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        """Idle stop: leave service (desired drops by one each), then stop; owner and disk kept."""

    async def start(self, instance_id: str, seen: Instance | None = None) -> Instance:
        """Resume a stopped box on its own disk and return it to service (desired rises by
        one). seen: the box as this operation has just read it (trusted instead of a look)."""

    async def terminate(self, instance_ids: Sequence[str]) -> BatchResult:
        """Delete boxes and their disks; desired drops by one for each box in service."""

    async def label_spares(self, instance_ids: Sequence[str]) -> None:
        """Record boxes that carry no owner at all as unowned (the seed's Owner=UNASSIGNED)."""

    async def box_shape(self) -> BoxShape:
        """What a box is (instance type, disk size), for the cost report."""

    async def checks(self) -> list[Check]:
        """Whether the backend is set up safely (for `codepool doctor`)."""

    async def refuses(self, user: str) -> str:
        """Why user may not have a workspace here ('' if they may): a machine that cannot
        keep workspaces apart serves one person only."""

    async def close(self) -> None:
        """Release clients and connections."""


def create_backend(settings: Settings) -> Backend:
    """The backend named by pool.backend; only its module is imported."""
    if settings.pool.backend == "local":
        from codepool.core.backends.local import LocalBackend

        return LocalBackend(settings.local, settings.state_dir)
    if settings.pool.backend == "aws":
        from codepool.core.backends.aws import AwsBackend

        return AwsBackend(settings.aws, cost=settings.cost)
    raise ConfigError(
        f"config error: pool.backend = {settings.pool.backend!r}: allowed: local, aws"
    )
