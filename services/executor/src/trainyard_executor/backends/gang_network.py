"""A network of its own for a gang's containers (Docker and Podman, through the Docker API).

A gang whose ranks all run on this executor gets a user-defined bridge network per attempt,
``trainyard-<job>-<attempt>``, labelled with the job, attempt and executor, removed once its
containers are. Its ranks reach each other there and nothing on the host's loopback (NATS, MLflow,
the monitor listen there): the host network is no longer theirs. They still reach what a single
container on the engine's default bridge reaches (the network is not ``internal``: pip and a remote
MLflow keep working).

Rank 0's hostname is :data:`MASTER_ALIAS` and ``MASTER_ADDR`` names it; the other ranks resolve it
through ``/etc/hosts`` (``extra_hosts`` with rank 0's address, read once it started), so no DNS
plugin is needed (Podman's CNI networks have none without the dnsname plugin).

A gang split across executors keeps the host network: its other members reach rank 0 at the
address its executor advertises (``TRAINYARD_EXECUTOR_ADVERTISE_HOST``), which on one host is
loopback, reachable only from the host's network.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from docker.errors import APIError, NotFound

from trainyard_executor.backends.base import Gang
from trainyard_executor.backends.engine_calls import transient

log = logging.getLogger("trainyard.executor.docker")

__all__ = [
    "MASTER_ALIAS",
    "NetworkNotOurs",
    "create_network",
    "master_address",
    "network_name",
    "own_network",
    "prune_networks",
    "remove_network",
]

MASTER_ALIAS = "trainyard-master"


def own_network(gang: Gang | None) -> bool:
    """Whether a gang gets its own network: every rank runs here (not split)."""
    return gang is not None and len(gang.ranks) == gang.world_size


def network_name(job_id: str, attempt: int) -> str:
    return f"trainyard-{job_id}-{attempt}"


class NetworkNotOurs(RuntimeError):
    """A network by the attempt's name that is not this attempt's: its ranks never join it."""


def create_network(client: Any, name: str, labels: dict[str, str]) -> None:
    """The gang's bridge network. Idempotent (it is asked again when an answer is lost): one by
    this name with these labels was made by a start of this attempt (a create whose answer was
    lost, a redelivered start) and is reused; one by this name without them is refused. Blocking."""
    try:
        _reuse_ours(client, name, labels)
        return
    except NotFound:
        pass
    try:
        client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
    except APIError as exc:  # created meanwhile by a redelivered start
        if exc.status_code != 409 and "already exists" not in str(exc.explanation or ""):
            raise
        _reuse_ours(client, name, labels)


def _reuse_ours(client: Any, name: str, labels: dict[str, str]) -> None:
    found = client.networks.get(name)
    have = found.attrs.get("Labels") or {}
    if any(have.get(key) != value for key, value in labels.items()):
        raise NetworkNotOurs(f"network {name} exists and is not this attempt's (labels {have})")


def master_address(container: Any, name: str) -> str | None:
    """Rank 0's address on the gang's network, as inspected once it started; None when rank 0 had
    already ended by then (a short job: the engine clears an ended container's address). The other
    ranks then start without its entry: nothing would answer at that address any more, and the
    gang's outcome comes from its ranks' exits as for any gang. Blocking."""
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = (networks.get(name) or {}).get("IPAddress")
    if address:
        return str(address)
    if not (container.attrs.get("State") or {}).get("Running", True):
        return None
    raise RuntimeError(f"rank 0 has no address on network {name}")


def remove_network(client: Any, name: str) -> None:
    """Best effort: a network still in use (a failed container kept for debugging) stays until
    the executor's next start prunes it; one already gone is removed; a transient failure is
    raised (to be asked again). Blocking."""
    try:
        client.api.remove_network(name)
    except NotFound:
        pass
    except APIError as exc:
        if transient(exc):
            raise
        log.info("gang network not removed", extra={"network": name, "error": str(exc.explanation or exc)})


def prune_networks(client: Any, label: str) -> None:
    """Remove this executor's gang networks that no container uses any more. Blocking."""
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(NotFound, APIError):
            network.reload()
            if not network.attrs.get("Containers"):
                client.api.remove_network(network.id)
