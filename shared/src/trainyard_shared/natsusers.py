"""The NATS users of an installation: one per service, one per executor id, ``client``, ``fetcher``
and ``admin``.

Each user may publish and subscribe only where its code does. The subjects come from the contracts
(``Subjects``: events, commands, logs, buckets) and from the JetStream API calls nats-py makes under
faststream: bucket and stream look-ups, the user's own durable pull consumers, KV reads, writes and
watches. Streams and buckets are declared by ``admin`` alone (``trainyard_shared.provision``): no
other user may create, update, delete or purge a stream, and no user may create, update, delete or
pull from a durable consumer that is not its own.

Every user but ``admin`` receives replies and deliveries on its own inbox prefix,
``_INBOX.<user>`` (``inbox_prefix``), and may subscribe there only: a shared ``_INBOX.>`` would let
any user read the JetStream answers sent to another (job records, tokens, commands).

``render()`` writes the ``authorization`` block of a nats-server config: deploy/nats/natsauth.py
writes it with passwords as server environment variables, the embedded stack with its generated
passwords (trainyard_client.stack).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trainyard_contracts import Subjects
from trainyard_contracts.modelregistry import MLFLOW_EVENTS

API = "$JS.API"

# who emits which job event (the last token of <prefix>.job.<id>.<event>). An executor emits none:
# it reports on its own subjects and the scheduler, which writes the record from the report,
# announces the change (trainyard_shared.reports)
EVENTS_BY_SERVICE: dict[str, tuple[str, ...]] = {
    "submission": ("submitted", "rejected", "cancel_requested"),
    # submitted: a copy under the same message id, ahead of queued (the stream keeps one)
    "scheduler": (
        "submitted",
        "queued",
        "scheduled",
        "requeued",
        "cancelled",
        "running",
        "succeeded",
        "failed",
        "timed_out",
    ),
    "executor": (),
    "registry": ("model_registered",),
    "telemetry": (),
    # its jobs' other events are the services' own (it submits through the intake); it asks for
    # a sweep trial's cancel (the pruner's, or a sweep's end) as the API asks for one
    "workflow": ("cancel_requested",),
}
SERVICES = tuple(EVENTS_BY_SERVICE)
# the services with one user each; executors have one user per executor id (executor_user)
SINGLE_USER_SERVICES = tuple(s for s in SERVICES if s != "executor")

REPORTS_DURABLE = "scheduler-exec-reports"  # trainyard_scheduler.app: executors' reports
TRIGGER_EVENTS_DURABLE = "workflow-trigger-events"  # trainyard_workflow.app
MODEL_TRIGGERS_DURABLE = "workflow-model-triggers"  # its filter: <prefix>.model.>
SWEEP_METRICS_DURABLE = "workflow-sweep-metrics"  # trainyard_workflow.app: trials' reports

# the durable consumers of each service: (stream field of StreamNames, durable name)
DURABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "submission": (("intake", "submission-intake"),),
    "scheduler": (("jobs", "scheduler-job-requests"), ("reports", REPORTS_DURABLE)),
    "registry": (("jobs", "registry-succeeded"),),
    "telemetry": (
        ("jobs", "telemetry-events"),
        ("metrics", "telemetry-metrics"),
        ("logs", "telemetry-logs"),  # job output to Logstash, when turned on (joblogs.py)
    ),
    # its triggers: the triggers stream (foreign subjects) and, filtered, the model events
    "workflow": (
        ("jobs", "workflow-job-outcomes"),
        ("triggers", TRIGGER_EVENTS_DURABLE),
        ("metrics", SWEEP_METRICS_DURABLE),  # what sweep trials report (the pruner's input)
    ),
}

SCHEDULE_LEASE_KEY = "workflow-schedules"  # trainyard_workflow.ticker

# KV buckets (field of BucketNames, or "tokens") each service writes, and the ones it only reads
KV_WRITES: dict[str, tuple[str, ...]] = {
    "submission": ("jobs", "idempotency", "queues", "tokens", "secrets"),
    "scheduler": ("jobs", "leases"),
    # its own key of the executors bucket only (executor_permissions): no job record (it reports)
    "executor": (),
    "registry": ("jobs", "models", "aliases"),
    "telemetry": (),
    # and its own key of the leases bucket
    "workflow": ("pipelines", "schedules", "triggers", "sweeps", "step_cache"),
}
KV_READS: dict[str, tuple[str, ...]] = {
    "submission": ("models", "executors"),
    "scheduler": ("executors", "queues"),
    # the job records (its attempts' records, watched until its report is applied) and a job's
    # secret values, put back right before it starts
    "executor": ("jobs", "secrets"),
    "registry": ("executors",),  # a version's lineage: the backend of the executor that ran it
    "telemetry": ("jobs", "queues"),  # a queue's metric_names (which reported names it shows)
    "workflow": ("jobs",),
}

# streams a service reads with short-lived pull consumers the server names (the API's logs and
# dead letters); no durable consumer lives on them
EPHEMERAL_PULLS: dict[str, tuple[str, ...]] = {"submission": ("logs", "dlq", "metrics", "audit")}
# the services that append to the audit stream, each on its own <prefix>.audit.<service>.> only:
# publishing is all they may do there (the stream denies deletes and purges; no service may
# update or delete a stream)
AUDIT_WRITERS = ("registry", "submission")


@dataclass
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    allow_responses: bool = False

    def add_publish(self, *subjects: str) -> None:
        self.publish += [s for s in subjects if s not in self.publish]

    def add_subscribe(self, *subjects: str) -> None:
        self.subscribe += [s for s in subjects if s not in self.subscribe]


def inbox_prefix(user: str) -> str:
    """Where ``user`` gets replies and deliveries (nats-py's ``inbox_prefix``)."""
    return f"_INBOX.{user}"


def executor_user(executor_id: str) -> str:
    return f"executor-{executor_id}"


def executor_durable(executor_id: str) -> str:
    return f"executor-{executor_id}"  # trainyard_executor.app: the executor's command consumer


def tokens_bucket(subjects: Subjects) -> str:
    return f"{subjects.prefix.replace('-', '_')}_tokens"  # trainyard_submission.tokens


def bucket_names(subjects: Subjects) -> dict[str, str]:
    names = subjects.buckets
    out = {name: getattr(names, name) for name in names.__dataclass_fields__}
    out["tokens"] = tokens_bucket(subjects)
    return out


def stream_names(subjects: Subjects) -> dict[str, str]:
    names = subjects.streams
    return {name: getattr(names, name) for name in names.__dataclass_fields__}


def look_up_streams(perms: Permissions, subjects: Subjects) -> None:
    """Bind to every stream and bucket (STREAM.INFO): a service waits for the provision step and
    never declares, updates, deletes or purges one."""
    perms.add_publish(f"{API}.INFO")
    for stream in [
        *stream_names(subjects).values(),
        *(f"KV_{b}" for b in bucket_names(subjects).values()),
        f"OBJ_{subjects.workdirs_bucket}",
        f"OBJ_{subjects.step_outputs_bucket}",
    ]:
        perms.add_publish(f"{API}.STREAM.INFO.{stream}")


def object_meta(perms: Permissions, bucket: str) -> None:
    """Read an Object Store bucket's objects' meta (the last message on its subject): whether a
    blob is there, not its bytes."""
    stream = f"OBJ_{bucket}"
    perms.add_publish(
        f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"
    )


def read_objects(perms: Permissions, bucket: str) -> None:
    """Read an Object Store bucket (trainyard_shared.blobs): an object's meta (last message on its
    subject) and its chunks (an ordered consumer the server names)."""
    stream = f"OBJ_{bucket}"
    object_meta(perms, bucket)
    # nats-py's chunk subscription asks which stream holds the chunks' subject (names only)
    perms.add_publish(f"{API}.STREAM.NAMES")
    read_stream(perms, stream)


def write_objects(perms: Permissions, bucket: str) -> None:
    """Add objects to an Object Store bucket: its chunks and meta. No purge (that would be a
    stream change): a blob is put once under its digest and never replaced."""
    read_objects(perms, bucket)
    perms.add_publish(f"$O.{bucket}.C.>", f"$O.{bucket}.M.>")


def read_stream(perms: Permissions, stream: str) -> None:
    """Ordered (push) consumers the server names: KV watches and key listings, ordered reads. The
    legacy create subject without a name cannot create or change a named (durable) consumer."""
    perms.add_publish(
        f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>"
    )


def pull_ephemeral(perms: Permissions, stream: str) -> None:
    """Pull consumers nats-py names at random, on a stream that holds no durable consumer (so no
    name can be another user's)."""
    read_stream(perms, stream)
    perms.add_publish(
        f"{API}.CONSUMER.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
    )


def read_bucket(perms: Permissions, bucket: str) -> None:
    stream = f"KV_{bucket}"
    perms.add_publish(
        f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}"
    )
    read_stream(perms, stream)


def durable(perms: Permissions, stream: str, name: str, filter_subject: str | None = None) -> None:
    """The user's own durable consumer: create it (with ``filter_subject`` only, when given: the
    server checks that the subject's filter is the consumer's), read its info, pull and ack."""
    create = f"{API}.CONSUMER.CREATE.{stream}.{name}"
    perms.add_publish(*((f"{create}.{filter_subject}",) if filter_subject else (create, f"{create}.>")))
    perms.add_publish(
        f"{API}.CONSUMER.INFO.{stream}.{name}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    )


def _base(user: str, service: str, subjects: Subjects) -> Permissions:
    perms = Permissions()
    perms.add_subscribe(f"{inbox_prefix(user)}.>")
    look_up_streams(perms, subjects)
    perms.add_publish(*(subjects.job_event_kind(event) for event in EVENTS_BY_SERVICE[service]))
    perms.add_publish(subjects.dlq(service))
    if service in AUDIT_WRITERS:
        perms.add_publish(subjects.audit_of(service))
    buckets = bucket_names(subjects)
    for bucket in KV_WRITES[service]:
        read_bucket(perms, buckets[bucket])
        perms.add_publish(f"$KV.{buckets[bucket]}.>")
    for bucket in KV_READS[service]:
        read_bucket(perms, buckets[bucket])
    return perms


# who writes job records' states, and so keeps the jobs index (trainyard_shared.jobindex)
JOB_INDEX_WRITERS = ("submission", "scheduler")
# who starts from the live jobs the index names instead of reading every record (liveread.py);
# the executors too (executor_permissions). Its entries say no more than the records these read.
JOB_INDEX_START_READERS = ("scheduler", "telemetry")


def write_job_index(perms: Permissions, subjects: Subjects) -> None:
    """Write the jobs index: an entry per state change, and the removal of the entry the job left
    (a purge filtered on that job's subject; NATS cannot limit a purge's filter, so this user could
    empty the index, which the records rebuild: jobindex.py)."""
    stream = subjects.streams.jobindex
    perms.add_publish(subjects.job_index, f"{API}.STREAM.PURGE.{stream}")


def read_job_index(perms: Permissions, subjects: Subjects) -> None:
    """Read the jobs index: batched direct gets, the last message of its built marker, and an
    ordered consumer for a read of every entry of a filter (oldest first)."""
    stream = subjects.streams.jobindex
    perms.add_publish(f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>")
    read_stream(perms, stream)


def service_permissions(service: str, subjects: Subjects) -> Permissions:
    if service not in SINGLE_USER_SERVICES:
        raise ValueError(
            f"unknown service {service!r}: one of {', '.join(SINGLE_USER_SERVICES)}"
            " (an executor: executor_permissions)"
        )
    streams = stream_names(subjects)
    buckets = bucket_names(subjects)
    perms = _base(service, service, subjects)
    for stream_field, name in DURABLES[service]:
        durable(perms, streams[stream_field], name)
    for stream_field in EPHEMERAL_PULLS.get(service, ()):
        pull_ephemeral(perms, streams[stream_field])
    if service in JOB_INDEX_WRITERS:
        write_job_index(perms, subjects)
    if service in JOB_INDEX_START_READERS:
        read_job_index(perms, subjects)

    if service == "submission":
        # questions for the scheduler leader (request/reply), and the intake's answer on the inbox
        # the submitter named in its Trainyard-Reply-To header; replaying its own dead letters
        # republishes on the intake subjects; reading and removing dead letters; a bucket read
        # (joblist.BucketReader) removes the ordered consumer it read with: no durable consumer
        # lives on a bucket's stream
        perms.add_publish(subjects.scheduler_why, subjects.scheduler_dry_run, "_INBOX.>")
        # pipeline requests for the workflow service, model alias and version requests for the
        # registry (request/reply)
        perms.add_publish(subjects.workflow_request("*"), subjects.registry_request("*"))
        perms.add_publish(subjects.intake_submit, subjects.intake_workflow)
        perms.add_publish(
            f"{API}.STREAM.MSG.GET.{streams['dlq']}", f"{API}.STREAM.MSG.DELETE.{streams['dlq']}"
        )
        # purging a finished job removes its log chunks (DELETE /v1/jobs/{id}?purge=true): NATS
        # cannot limit a purge's subject filter, so this user could purge any job's logs
        perms.add_publish(f"{API}.STREAM.PURGE.{streams['logs']}")
        for bucket in (*KV_WRITES["submission"], *KV_READS["submission"]):
            perms.add_publish(f"{API}.CONSUMER.DELETE.KV_{buckets[bucket]}.*")
        write_objects(perms, subjects.workdirs_bucket)  # PUT /v1/workdirs
        read_job_index(perms, subjects)  # GET /v1/jobs, the UI's jobs table
    elif service == "scheduler":
        perms.add_publish(
            subjects.exec_command("*", "start"),
            subjects.exec_command("*", "cancel"),
            subjects.scheduler_decisions,
            subjects.all_exec_applied,  # "your report is applied": a wake-up for its executor
        )
        # answers to why / dry-run go to the asker's reply subject (allow_responses)
        perms.add_subscribe(subjects.scheduler_why, subjects.scheduler_dry_run)
        perms.allow_responses = True
        # removes a job's secrets when the job ends (a purge is a publish); never reads them
        perms.add_publish(f"$KV.{buckets['secrets']}.>")
        # whether an event is on the jobs stream (an old job's submitted copy; the event of a
        # report applied before, redelivered): reading one message, which carries no secret
        perms.add_publish(f"{API}.STREAM.MSG.GET.{streams['jobs']}")
    elif service == "registry":
        perms.add_publish(subjects.model_registered("*"))
        # changes made in MLflow directly, as its webhooks tell them (one subject per event kind)
        perms.add_publish(*(subjects.model_event("*", event) for event in MLFLOW_EVENTS.values()))
        # the API's alias, version and compare requests, answered on the asker's inbox
        perms.add_subscribe(subjects.registry_request("*"))
        perms.allow_responses = True
    elif service == "workflow":
        # its steps' and trials' jobs go through its own intake subject, which no other user may
        # publish to, so no sender can take a step's key first (answers on its own inbox);
        # its runs' events; the API's requests, answered on the asker's inbox (allow_responses)
        perms.add_publish(subjects.intake_workflow, subjects.pipeline_events())
        perms.add_subscribe(subjects.workflow_request("*"))
        perms.allow_responses = True
        # the schedule ticker's lease, one key: never the scheduler's
        read_bucket(perms, subjects.buckets.leases)
        perms.add_publish(f"$KV.{subjects.buckets.leases}.{SCHEDULE_LEASE_KEY}")
        # triggers on model events (Trainyard's registrations, MLflow's changes told by its
        # webhooks): a durable on the models stream, filtered to its subjects; never a subscription
        durable(perms, streams["models"], MODEL_TRIGGERS_DURABLE, subjects.all_model_events)
        # a sweep trial's objective when its job ended: the last batch of its metrics (one message)
        perms.add_publish(f"{API}.STREAM.MSG.GET.{streams['metrics']}")
        # a step cache hit: whether the earlier jobs' outputs folders are still stored (an
        # object's meta, one message; never its chunks)
        object_meta(perms, subjects.step_outputs_bucket)
    return perms


def executor_permissions(executor_id: str, subjects: Subjects) -> Permissions:
    """One executor: its own commands (its durable, filtered on ``exec.<id>.*``), its own heartbeat
    key, its own report subjects (``exec-report.<id>.*``: the subject proves which executor
    spoke), the job records read only, its jobs' logs and metrics (any job's, as for logs: which
    executor runs a job is decided at run time, and the server's permissions are static)."""
    perms = _base(executor_user(executor_id), "executor", subjects)
    durable(
        perms,
        subjects.streams.exec,
        executor_durable(executor_id),
        filter_subject=subjects.exec_commands_of(executor_id),
    )
    executors = subjects.buckets.executors
    read_bucket(perms, executors)
    perms.add_publish(f"$KV.{executors}.{executor_id}", f"{subjects.prefix}.log.>", subjects.metrics_of())
    perms.add_publish(subjects.exec_reports_of(executor_id))
    perms.add_subscribe(subjects.exec_applied(executor_id))  # the scheduler's wake-up, its own only
    read_job_index(perms, subjects)  # its start-up read of the live jobs (liveread.py)
    read_objects(perms, subjects.workdirs_bucket)  # the jobs' packed workdirs, read only
    # pipeline steps' outputs folders: packed and put by the step's executor, read by its
    # dependents' (put once by digest, never purged: a blob is never replaced)
    write_objects(perms, subjects.step_outputs_bucket)
    return perms


FETCHER_USER = "fetcher"


def fetcher_permissions(subjects: Subjects) -> Permissions:
    """The init container of a Kubernetes job pod (``python -m trainyard_executor.fetch``): reads a
    packed workdir and steps' outputs folders by digest, and nothing else: no put, no purge, no
    other stream or bucket, no job record, no event. It runs in the job's pod, so whatever it may
    do, a job that read its password could too (the password is referenced by that container alone)."""
    perms = Permissions()
    perms.add_subscribe(f"{inbox_prefix(FETCHER_USER)}.>")
    for bucket in (subjects.workdirs_bucket, subjects.step_outputs_bucket):
        perms.add_publish(f"{API}.STREAM.INFO.OBJ_{bucket}")
        read_objects(perms, bucket)
    return perms


def client_permissions(subjects: Subjects) -> Permissions:
    """Another system: submits on the intake subject, follows job events (README example) and
    publishes events for triggers under ``<prefix>.trigger.>``."""
    perms = Permissions()
    perms.add_subscribe(f"{inbox_prefix('client')}.>")
    perms.add_publish(subjects.intake_submit, f"{API}.INFO", f"{API}.STREAM.NAMES")
    perms.add_publish(subjects.trigger_events)
    jobs = subjects.streams.jobs
    perms.add_publish(f"{API}.STREAM.INFO.{jobs}")
    read_stream(perms, jobs)
    return perms


def users(subjects: Subjects, executor_ids: Iterable[str] = ()) -> dict[str, Permissions | None]:
    """Every user and its permissions; ``None``: the operator with no limits (``admin``), which
    declares the streams and buckets and serves the nats CLI and dead-letter replays."""
    out: dict[str, Permissions | None] = {s: service_permissions(s, subjects) for s in SINGLE_USER_SERVICES}
    for executor_id in executor_ids:
        out[executor_user(executor_id)] = executor_permissions(executor_id, subjects)
    out["client"] = client_permissions(subjects)
    out[FETCHER_USER] = fetcher_permissions(subjects)
    out["admin"] = None
    return out


def password_variable(user: str) -> str:
    return "TRAINYARD_NATS_PASSWORD_" + user.upper().replace("-", "_")


def _quoted(items: list[str], indent: str) -> str:
    return "\n".join(f'{indent}"{item}"' for item in items)


def render(
    subjects: Subjects,
    executor_ids: Iterable[str],
    passwords: Mapping[str, str] | None = None,
    header: Iterable[str] = (),
) -> str:
    """The ``authorization`` block. A password is ``passwords[user]`` (quoted) or, without
    ``passwords``, the server's environment variable ``password_variable(user)``."""
    lines = [*(f"# {line}" if line else "#" for line in header), "authorization {", "  users = ["]
    for user, perms in users(subjects, executor_ids).items():
        password = f'"{passwords[user]}"' if passwords is not None else f"${password_variable(user)}"
        lines.append(f"    {{ user: {user}, password: {password}")
        if perms is None:
            lines.append(
                "      # the operator: declares streams and buckets; the nats CLI; dead-letter replays"
            )
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
