"""How the router checks the certificate of a box it reaches over https.

Boxes carry a certificate from a private CA (deploy/workspace-tls.sh makes one); the
router trusts that CA only for boxes (`aws.workspace_ca_file`) and checks one fixed name
(`aws.workspace_tls_name`), since a box's address is not known when its image is built.
Verification is never switched off: a router that accepted any certificate would hand
people's sessions to whoever answers on a box's address."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepool.core.errors import ConfigError


@dataclass(frozen=True)
class WorkspaceTls:
    """The context that verifies boxes, and the name their certificates must carry
    (None: the address dialled, as for any https URL)."""

    context: ssl.SSLContext
    server_name: str | None


def workspace_tls(ca_file: str, server_name: str) -> WorkspaceTls:
    """Build it from the two settings; a missing or unreadable CA file is a ConfigError."""
    try:
        context = ssl.create_default_context(
            cafile=str(Path(ca_file).expanduser()) if ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"config error: aws.workspace_ca_file = {ca_file!r}: cannot load it as a PEM "
            f"CA bundle ({exc}); allowed: a readable PEM file, or empty for the system's CAs"
        ) from None
    return WorkspaceTls(context, server_name or None)


def connect_args(tls: WorkspaceTls | None, scheme: str) -> dict[str, Any]:
    """Keyword arguments for dialling a box (asyncio and aiohttp take the same two): none
    for plain http, else verification with tls, or with the system's CAs without it."""
    if scheme not in ("https", "wss"):
        return {}
    if tls is None:
        return {"ssl": True}
    return {"ssl": tls.context, "server_hostname": tls.server_name}
