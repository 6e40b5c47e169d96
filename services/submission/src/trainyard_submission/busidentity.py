"""Who publishes on the bus intake: an API token in the ``Trainyard-Token`` header, or nobody.

A bus publisher gets the same rules as an HTTP caller with the same token (its team's queue only,
the queue's priority cap and shell rule). One that names no identity is accepted only into a queue
whose configuration says ``allow_anonymous_bus`` (the built-in ``default`` queue does, so a plain
``nats`` script keeps working on the embedded stack). A token that is named but unknown or revoked
is refused, never treated as anonymous.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainyard_contracts import FieldError, SpecError
from trainyard_submission.tokens import Principal, TokenStore

TOKEN_HEADER = "Trainyard-Token"


class IdentityRefused(SpecError):
    def __init__(self) -> None:
        super().__init__([FieldError(field=TOKEN_HEADER, message="unknown, malformed or revoked API token")])


async def bus_principal(tokens: TokenStore | None, headers: Mapping[str, str]) -> Principal | None:
    """The principal the publisher named, None when it named none; IdentityRefused for a bad one."""
    token = headers.get(TOKEN_HEADER)
    if token is None:
        return None
    principal = await tokens.authenticate(f"Bearer {token}") if tokens is not None else None
    if principal is None:
        raise IdentityRefused()
    return principal


def bus_name(principal: Principal | None) -> str:
    """``submitted_by`` of a bus submission: ``bus``, or ``bus:<team or admin>:<token id>``."""
    return "bus" if principal is None else f"bus:{principal.team or 'admin'}:{principal.token_id}"
