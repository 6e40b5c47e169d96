"""Refuse at submit a spec that no registered executor could ever run (pure; no I/O).

The rule, as docs/scheduling.md ("Refused at submit") states it for users:

- With at least one executor online, a replica must fit one of them when it is empty: its cpu,
  memory and gpu all at once. Otherwise the spec is refused (HTTP 422, bus: rejected) naming the
  field and the largest offer, instead of waiting forever ("too_large" in ``why``).
- With no executor online, the job is accepted and waits: executors come and go (a restart, a
  scale-up), and refusing every job while none is up would turn a short outage into lost work.
  ``why`` says "no executor" until one registers.

A replica of a gang is checked alone: a split gang spreads its replicas over several executors.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainyard_contracts import FieldError, JobSpec
from trainyard_contracts.records import Capacity

# how many executor shapes an error lists when no single one holds all of a replica's resources
SHAPES_SHOWN = 5


def _shape(capacity: Capacity) -> str:
    return f"cpu {capacity.cpu:g}, memory {capacity.memory} MiB, gpu {capacity.gpu}"


def unfittable(spec: JobSpec, offers: Iterable[Capacity]) -> list[FieldError]:
    """Why no executor among ``offers`` (the online executors' capacities) could run one replica
    of ``spec``; empty when one could, or when there are no offers (the job waits for one)."""
    capacities = list(offers)
    if not capacities:
        return []
    wanted = spec.resources
    errors = []
    for field, want, largest, unit in (
        ("cpu", wanted.cpu, max(c.cpu for c in capacities), ""),
        ("memory", wanted.memory, max(c.memory for c in capacities), " MiB"),
        ("gpu", wanted.gpu, max(c.gpu for c in capacities), ""),
    ):
        if want > largest:
            errors.append(
                FieldError(
                    field=f"resources.{field}",
                    message=f"{want:g}{unit} per replica is more than any executor offers: the largest "
                    f"has {largest:g}{unit} ({len(capacities)} executor(s) online)",
                )
            )
    if errors:
        return errors
    if any(wanted.cpu <= c.cpu and wanted.memory <= c.memory and wanted.gpu <= c.gpu for c in capacities):
        return []
    largest_first = sorted(capacities, key=lambda c: (c.gpu, c.cpu, c.memory), reverse=True)
    shapes = "; ".join(_shape(c) for c in largest_first[:SHAPES_SHOWN])
    return [
        FieldError(
            field="resources",
            message=f"no executor offers cpu {wanted.cpu:g}, memory {wanted.memory} MiB and gpu "
            f"{wanted.gpu} together; the executors online offer: {shapes}",
        )
    ]
