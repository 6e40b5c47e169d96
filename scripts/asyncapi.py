"""Write one AsyncAPI document per service, generated from its faststream app (make asyncapi).

The batch consumers (``trainyard_shared.pullconsumer.batch_consumer``) are not faststream subscribers:
each is a ``Puller`` in its ``ServiceBroker.pullers``, which faststream does not see. Every puller
of the service is added here as the receive operation faststream would have written for a
subscriber of the same subject, title and description, with the message model
``_payloads`` names for its durable.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

SERVICES = ("scheduler", "executor", "registry", "telemetry", "workflow")


def _payloads() -> dict[str, Any]:
    from trainyard_contracts import (
        ExecutorCommand,
        JobCancelRequested,
        JobEvent,
        JobSucceeded,
        MetricsBatch,
        ModelRegistered,
    )
    from trainyard_contracts.reports import ExecutorReport

    return {
        # what each batch consumer's parse reads, by its durable (a pattern); None: raw bytes; a
        # dict: per filter subject, by the subject's last token
        "executor-*": ExecutorCommand,
        "registry-succeeded": JobSucceeded,
        # parse_job_event reads any job event; the consumer's filter subjects deliver this one
        "scheduler-job-requests": {"cancel_requested": JobCancelRequested},
        "scheduler-exec-reports": ExecutorReport,  # what executors report, on their own subjects
        "telemetry-events": JobEvent,
        "telemetry-metrics": MetricsBatch,
        "submission-intake": None,  # a job spec as YAML or JSON, parsed by the intake itself
        # parse_job_event reads any job event; the filter subjects deliver these outcomes
        "workflow-job-outcomes": _outcome_models(),
        # any JSON another system publishes on a subject triggers may follow (read by the trigger)
        "workflow-trigger-events": None,
        "workflow-model-triggers": ModelRegistered,
        "workflow-sweep-metrics": MetricsBatch,  # what running jobs report: sweep trials' objective
    }


def _outcome_models() -> dict[str, Any]:
    from trainyard_contracts import JobCancelled, JobFailed, JobSucceeded, JobTimedOut, ModelRegistered

    return {
        "succeeded": JobSucceeded,
        "failed": JobFailed,
        "timed_out": JobTimedOut,
        "cancelled": JobCancelled,
        "model_registered": ModelRegistered,  # a step's model version: the steps using it may go
    }


def payload_of(durable: str, subject: str, payloads: dict[str, Any]) -> Any:
    """The message model of ``durable``'s channel on ``subject`` (see ``_payloads``)."""
    for pattern, model in payloads.items():
        if not fnmatch(durable, pattern):
            continue
        if isinstance(model, dict):
            kind = subject.rsplit(".", 1)[-1]
            if kind not in model:
                raise SystemExit(f"batch consumer {durable!r}: no message model for {subject!r}")
            return model[kind]
        return model
    raise SystemExit(
        f"batch consumer {durable!r}: no message model for its AsyncAPI operation; add it to "
        "_payloads() in scripts/asyncapi.py"
    )


@contextlib.contextmanager
def service_brokers() -> Iterator[list[Any]]:
    """Every ``ServiceBroker`` that ``make_broker`` builds inside the block: an app keeps its own
    out of reach, and its pullers with it."""
    from trainyard_shared import broker as module

    built: list[Any] = []
    original = module.ServiceBroker

    class Recorded(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    module.ServiceBroker = Recorded  # type: ignore[misc]
    try:
        yield built
    finally:
        module.ServiceBroker = original  # type: ignore[misc]


def _channels_of(puller: Any) -> list[tuple[str, str]]:
    """(title, subject) of each channel: one per filter subject when the consumer has them."""
    filters = list(puller.config.filter_subjects or [])
    if not filters:
        return [(puller.title, puller.subject)]
    return [(f"{puller.title}/{subject.rsplit('.', 1)[-1]}", subject) for subject in filters]


def pullers_document(pullers: list[Any], servers: list[str]) -> dict[str, Any]:
    """The AsyncAPI document faststream writes for subscribers like these pullers."""
    from faststream import FastStream
    from faststream.nats import NatsBroker
    from faststream.specification import AsyncAPI

    payloads = _payloads()
    broker = NatsBroker(servers)
    for puller in pullers:
        for title, subject in _channels_of(puller):
            model = payload_of(puller.durable, subject, payloads)

            async def handler(message) -> None:  # type: ignore[no-untyped-def]  # never called
                return None

            if model is not None:  # the parameter's annotation is the message schema
                handler.__annotations__ = {"message": model, "return": None}
            broker.subscriber(subject, title=title, description=puller.description)(handler)
    app = FastStream(broker, specification=AsyncAPI(title="pullers"))
    return app.schema.to_specification().to_jsonable()  # type: ignore[no-any-return]


def add_pullers(doc: dict[str, Any], pullers: list[Any], servers: list[str]) -> dict[str, Any]:
    """``doc`` with a channel, an operation and the message schemas of every puller."""
    if not pullers:
        return doc
    extra = pullers_document(pullers, servers)
    for ref in (ref["$ref"] for channel in extra["channels"].values() for ref in channel.get("servers", [])):
        name = ref.rsplit("/", 1)[-1]
        if name not in doc.get("servers", {}):
            raise SystemExit(f"{doc['info']['title']}: no server {name!r} for the batch consumers")
    merged = {**doc, "channels": dict(doc.get("channels", {})), "operations": dict(doc.get("operations", {}))}
    components = doc.get("components", {})
    merged["components"] = {
        **components,
        "messages": dict(components.get("messages", {})),
        "schemas": dict(components.get("schemas", {})),
    }
    for section, into in (
        (extra["channels"], merged["channels"]),
        (extra["operations"], merged["operations"]),
        (extra["components"]["messages"], merged["components"]["messages"]),
        (extra["components"]["schemas"], merged["components"]["schemas"]),
    ):
        for key, value in section.items():
            if key in into and into[key] != value:
                raise SystemExit(f"{doc['info']['title']}: {key!r} is described twice, differently")
            into[key] = value
    return merged


def _servers() -> list[str]:
    from trainyard_shared.settings import CommonSettings

    return [url.strip() for url in CommonSettings().nats_url.split(",")]  # as make_broker does


def service_documents() -> dict[str, dict[str, Any]]:
    """Each service's AsyncAPI document, batch consumers included."""
    docs = {}
    for service in SERVICES:
        with service_brokers() as built:
            app = importlib.import_module(f"trainyard_{service}.app").create_app()
        doc = app.schema.to_specification().to_jsonable()
        docs[service] = add_pullers(doc, [p for sb in built for p in sb.pullers], _servers())
    with service_brokers() as built:
        doc = importlib.import_module("trainyard_submission.app").build_asyncapi()
    docs["submission"] = add_pullers(doc, [p for sb in built for p in sb.pullers], _servers())
    return docs


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for service, doc in service_documents().items():
        path = target / f"{service}.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi"))
