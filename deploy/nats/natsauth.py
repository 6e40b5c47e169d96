"""One NATS user per service, allowed only the subjects that service's code uses.

The subjects come from the contracts (``Subjects``: events, commands, logs, buckets) and from the
JetStream API calls the clients make (nats-py 2.x under faststream): stream and bucket declaration
at start-up, durable pull consumers, KV reads, writes and watches. ``render()`` writes the
``authorization`` block of a nats-server config; passwords are environment variables of the server
(``$TRAINYARD_NATS_PASSWORD_<USER>``), never in the file.

Regenerate after a change here or in the subjects (tests fail while the files are stale):

    uv run --frozen python deploy/nats/natsauth.py            # deploy/nats/auth.conf + the k8s copy
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainyard_contracts import Subjects

HERE = Path(__file__).resolve().parent
OUTPUTS = (HERE / "auth.conf", HERE.parent / "k8s" / "base" / "nats" / "auth.conf")

# who emits which job event (the last token of <prefix>.job.<id>.<event>); "cancelled" and
# "requeued" have two writers: the scheduler for a job not yet running, the executor for its attempt
EVENTS_BY_SERVICE: dict[str, tuple[str, ...]] = {
    "submission": ("submitted", "rejected", "cancel_requested"),
    # submitted: a copy under the same message id, ahead of queued (the stream keeps one)
    "scheduler": ("submitted", "queued", "scheduled", "requeued", "cancelled"),
    "executor": ("running", "succeeded", "failed", "timed_out", "cancelled", "requeued"),
    "registry": ("model_registered",),
    "telemetry": (),
}
SERVICES = tuple(EVENTS_BY_SERVICE)

# the durable consumers of each service: (stream field of StreamNames, durable name or None for
# "any name": executors are many, each named executor-<id>)
DURABLES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "submission": (("intake", "submission-intake"),),
    "scheduler": (("jobs", "scheduler-job-requests"),),
    "executor": (("exec", None),),
    "registry": (("jobs", "registry-succeeded"),),
    "telemetry": (("jobs", "telemetry-events"),),
}

# KV buckets (field of BucketNames, or "tokens") each service writes, and the ones it only reads
KV_WRITES: dict[str, tuple[str, ...]] = {
    "submission": ("jobs", "idempotency", "queues", "tokens"),
    "scheduler": ("jobs", "leases"),
    "executor": ("jobs", "executors"),
    "registry": ("jobs", "models"),
    "telemetry": (),
}
KV_READS: dict[str, tuple[str, ...]] = {
    "submission": ("models",),
    "scheduler": ("executors", "queues"),
    "executor": (),
    "registry": (),
    "telemetry": ("jobs",),
}

# streams a service reads with short-lived (ephemeral) consumers: the API's logs and dead letters
EPHEMERAL_READS: dict[str, tuple[str, ...]] = {"submission": ("logs", "dlq")}


@dataclass
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    allow_responses: bool = False

    def add_publish(self, *subjects: str) -> None:
        self.publish += [s for s in subjects if s not in self.publish]

    def add_subscribe(self, *subjects: str) -> None:
        self.subscribe += [s for s in subjects if s not in self.subscribe]


def bucket_names(subjects: Subjects) -> dict[str, str]:
    names = subjects.buckets
    out = {name: getattr(names, name) for name in names.__dataclass_fields__}
    out["tokens"] = f"{subjects.prefix.replace('-', '_')}_tokens"  # trainyard_submission.tokens
    return out


def stream_names(subjects: Subjects) -> dict[str, str]:
    names = subjects.streams
    return {name: getattr(names, name) for name in names.__dataclass_fields__}


def declare_everything(perms: Permissions, subjects: Subjects) -> None:
    """Every service declares every stream and bucket at start-up (bus.ensure_streams and
    open_buckets), so start order does not matter: create, update and info, never delete or purge."""
    api = "$JS.API"
    perms.add_publish(f"{api}.INFO")
    declared = list(stream_names(subjects).values()) + [f"KV_{b}" for b in bucket_names(subjects).values()]
    for stream in declared:
        perms.add_publish(f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.CREATE.{stream}")
        perms.add_publish(f"{api}.STREAM.UPDATE.{stream}")


def read_stream(perms: Permissions, stream: str) -> None:
    """Ephemeral consumers on a stream (KV watch and keys, ordered reads, the API's log reads)."""
    api = "$JS.API"
    perms.add_publish(
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",
    )


def read_bucket(perms: Permissions, bucket: str) -> None:
    api = "$JS.API"
    stream = f"KV_{bucket}"
    perms.add_publish(
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.STREAM.MSG.GET.{stream}",
    )
    read_stream(perms, stream)


def durable(perms: Permissions, stream: str, name: str | None) -> None:
    api = "$JS.API"
    consumer = name or "*"
    perms.add_publish(
        f"{api}.CONSUMER.INFO.{stream}.{consumer}",
        f"{api}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{api}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def service_permissions(service: str, subjects: Subjects) -> Permissions:
    if service not in EVENTS_BY_SERVICE:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    p = subjects.prefix
    streams = stream_names(subjects)
    buckets = bucket_names(subjects)
    perms = Permissions()
    # replies to the JetStream API, pull-consumer deliveries and KV watches all arrive on inboxes
    perms.add_subscribe("_INBOX.>")
    declare_everything(perms, subjects)
    perms.add_publish(*(subjects.job_event_kind(event) for event in EVENTS_BY_SERVICE[service]))
    perms.add_publish(subjects.dlq(service))
    for stream_field, name in DURABLES[service]:
        durable(perms, streams[stream_field], name)
    for bucket in KV_WRITES[service]:
        read_bucket(perms, buckets[bucket])
        perms.add_publish(f"$KV.{buckets[bucket]}.>")
    for bucket in KV_READS[service]:
        read_bucket(perms, buckets[bucket])
    for stream_field in EPHEMERAL_READS.get(service, ()):
        read_stream(perms, streams[stream_field])

    if service == "submission":
        # questions for the scheduler leader (request/reply), and the intake's answer on the inbox
        # the submitter named in its Trainyard-Reply-To header; replaying its own dead letters
        # republishes on the intake subject; reading and removing dead letters
        perms.add_publish(subjects.scheduler_why, subjects.scheduler_dry_run, "_INBOX.>")
        perms.add_publish(subjects.intake_submit)
        perms.add_publish(f"$JS.API.STREAM.MSG.GET.{streams['dlq']}")
        perms.add_publish(f"$JS.API.STREAM.MSG.DELETE.{streams['dlq']}")
    elif service == "scheduler":
        perms.add_publish(
            subjects.exec_command("*", "start"),
            subjects.exec_command("*", "cancel"),
            subjects.scheduler_decisions,
        )
        # answers to why / dry-run go to the asker's reply subject (allow_responses)
        perms.add_subscribe(subjects.scheduler_why, subjects.scheduler_dry_run)
        perms.allow_responses = True
    elif service == "executor":
        perms.add_publish(f"{p}.log.>")
    elif service == "registry":
        perms.add_publish(subjects.model_registered("*"))
    return perms


def client_permissions(subjects: Subjects) -> Permissions:
    """Another system: submits on the intake subject and follows job events (README example)."""
    perms = Permissions()
    perms.add_subscribe("_INBOX.>")
    perms.add_publish(subjects.intake_submit, "$JS.API.INFO", "$JS.API.STREAM.NAMES")
    jobs = subjects.streams.jobs
    perms.add_publish(f"$JS.API.STREAM.INFO.{jobs}")
    read_stream(perms, jobs)
    return perms


def users(subjects: Subjects) -> dict[str, Permissions | None]:
    """Every user and its permissions; ``None``: an operator with no limits (the ``admin`` user)."""
    out: dict[str, Permissions | None] = {s: service_permissions(s, subjects) for s in SERVICES}
    out["client"] = client_permissions(subjects)
    out["admin"] = None
    return out


def password_variable(user: str) -> str:
    return f"TRAINYARD_NATS_PASSWORD_{user.upper()}"


def _quoted(items: list[str], indent: str) -> str:
    return "\n".join(f'{indent}"{item}"' for item in items)


def render(subjects: Subjects | None = None) -> str:
    subjects = subjects or Subjects()
    lines = [
        "# GENERATED by deploy/nats/natsauth.py from the contracts' subjects; do not edit by hand:",
        "#   uv run --frozen python deploy/nats/natsauth.py",
        f"# Subject prefix: {subjects.prefix}. One user per service; a password is an environment",
        "# variable of nats-server (compose: dev defaults; Kubernetes: the Secret trainyard-nats-users).",
        "authorization {",
        "  users = [",
    ]
    for user, perms in users(subjects).items():
        lines.append(f"    {{ user: {user}, password: ${password_variable(user)}")
        if perms is None:
            lines.append("      # operators: the nats CLI, dead-letter replays of any subject")
            lines.append("    }")
            continue
        lines.append("      permissions: {")
        lines.append("        publish: { allow: [")
        lines.append(_quoted(perms.publish, "          "))
        lines.append("        ] }")
        lines.append("        subscribe: { allow: [")
        lines.append(_quoted(perms.subscribe, "          "))
        lines.append("        ] }")
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render(Subjects(argv[1]) if len(argv) > 1 else Subjects())
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
