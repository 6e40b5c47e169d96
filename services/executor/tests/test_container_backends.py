"""The docker and podman backends against real engines, and a job through the services on Docker.

Every engine test runs once per engine (markers ``docker`` / ``podman``) and is skipped only when
that engine cannot be reached: ``.ci/run`` installs and starts both (dockerd; ``podman system
service`` on /run/podman/podman.sock). The test image is a 2 MB busybox built here from Debian's
busybox-static (``tests/images/build_busybox.sh``); a fixture builds it when it is missing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from docker.errors import NotFound

from trainyard_executor.backends.base import Resources
from trainyard_executor.backends.docker import (
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_JOB,
    LABEL_RANK,
    DockerBackend,
    GangAttempt,
    image_missing_reason,
)
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import ENGINE_URLS, IMAGE, Lines, gone, make_launch
from trainyard_shared.testing.helpers import eventually, running

pytest_plugins = ["trainyard_executor.testengines"]  # the engine and backend fixtures


# -- the backend against each engine -------------------------------------------------------------


async def test_success_with_env_and_an_output_file_seen_on_the_host(backend, tmp_path):
    script = (
        'echo "hello $GREETING from $TRAINYARD_JOB_ID";'
        'echo "path=$PATH home=${HOME:-unset}";'
        'echo weights > "$TRAINYARD_OUTPUT_DIR/model.txt"'
    )
    launch = make_launch(
        tmp_path,
        ["sh", "-c", script],
        env={"GREETING": "world", "TRAINYARD_JOB_ID": "j1", "PATH": "/host/venv/bin:/usr/bin"},
        inherited_env=("PATH", "HOME"),  # the executor's own PATH means nothing in the image
    )
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0"), (
        outcome.reason,
        lines.got,
    )
    assert outcome.output_dir == launch.workdir / "outputs"  # the host path, for the registry
    assert (outcome.output_dir / "model.txt").read_text() == "weights\n"
    assert lines.of("stdout")[0] == "hello world from j1"
    # the image's PATH, not the host's; HOME: the engine's for a uid the image has no account of
    assert lines.of("stdout")[1] == "path=/bin home=/"
    await attempt.release()  # what the executor does once the outcome is recorded
    assert gone(backend, attempt.container_id)


async def test_a_git_source_is_checked_out_on_the_host_and_is_the_working_dir(backend, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.sh").write_text('echo "from source in $(pwd)"; echo m > "$TRAINYARD_OUTPUT_DIR/m.txt"\n')
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([*git, *args], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    launch = make_launch(
        tmp_path, ["sh", "train.sh"], source_repo=str(repo), source_commit=commit.stdout.strip()
    )
    lines = Lines()
    outcome = await (await backend.start(launch, lines)).wait()
    assert outcome.kind == "succeeded", lines.got
    assert lines.of("stdout") == ["from source in /trainyard/work/src"]
    assert outcome.output_dir == launch.workdir / "src" / "outputs"
    assert (outcome.output_dir / "m.txt").read_text() == "m\n"


async def test_stdout_and_stderr_lines_arrive_in_order(backend, tmp_path):
    script = "i=1; while [ $i -le 200 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; printf tail"
    lines = Lines()
    outcome = await (await backend.start(make_launch(tmp_path, ["sh", "-c", script]), lines)).wait()
    assert outcome.kind == "succeeded"
    assert lines.of("stdout") == [f"out {i}" for i in range(1, 201)] + ["tail"]
    assert lines.of("stderr") == [f"err {i}" for i in range(1, 201)]


async def test_a_non_zero_exit_code_fails_the_attempt(backend, tmp_path):
    backend.default_image = IMAGE  # (and a spec without an image runs in the executor's default)
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, ["sh", "-c", "echo hi; exit 3"], image=None), lines)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 3, "exit code 3")
    assert lines.of("stdout") == ["hi"]
    await attempt.release()  # what the executor does once the outcome is recorded
    assert gone(backend, attempt.container_id)


async def test_the_memory_limit_is_enforced_and_an_oom_kill_says_so(backend, engine, tmp_path):
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\000" a); echo survived'
    launch = make_launch(tmp_path, ["sh", "-c", hog], memory_mb=16)
    lines = Lines()
    outcome = await (await backend.start(launch, lines)).wait()
    assert outcome.kind == "failed" and "survived" not in lines.of("stdout")
    if engine == "docker":
        assert outcome.reason == "killed: out of memory (limit 16 MiB), exit code 137"
    else:  # Podman's compatible inspect does not say OOMKilled: the reason guesses
        assert outcome.reason == "exit code 137 (killed by signal SIGKILL; out of memory? limit 16 MiB)"


async def test_a_timeout_stops_the_container_and_removes_it(backend, tmp_path):
    launch = make_launch(tmp_path, ["sh", "-c", "echo started; sleep 60"], timeout_s=1.0, grace_s=1.0)
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()
    assert outcome.kind == "timed_out" and outcome.reason == "timed out after 1s"
    assert lines.of("stdout") == ["started"]
    await attempt.release()  # what the executor does once the outcome is recorded
    assert gone(backend, attempt.container_id)


async def test_cancel_sends_term_and_waits_out_the_grace_period(backend, tmp_path):
    # sh's trap runs on TERM (the init passes it on) and proves the job got its grace period
    script = (
        "trap 'echo got-term > \"$TRAINYARD_OUTPUT_DIR/marker\"; echo cleaning up; exit 0' TERM;"
        "echo ready; sleep 60 & wait"
    )
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, ["sh", "-c", script], grace_s=30.0), lines)

    async def ready() -> bool:
        return "ready" in lines.of("stdout")

    await eventually(ready, 30, "the job's ready line")
    await attempt.cancel(20.0)
    outcome = await attempt.wait()
    assert outcome.kind == "cancelled" and outcome.exit_code == 0  # it ended by itself, in time
    assert (outcome.output_dir / "marker").read_text() == "got-term\n"
    assert lines.of("stdout") == ["ready", "cleaning up"]
    await attempt.release()  # what the executor does once the outcome is recorded
    assert gone(backend, attempt.container_id)


async def test_a_missing_image_fails_with_a_reason_and_no_exception(backend, tmp_path):
    launch = make_launch(tmp_path, ["true"], image="trainyard-test/no-such-image:0")
    attempt = await backend.start(launch, Lines())
    outcome = await attempt.wait()
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == image_missing_reason("trainyard-test/no-such-image:0")
    assert "build or pull it first" in outcome.reason


async def test_a_command_missing_from_the_image_fails_with_the_init_s_complaint(backend, engine, tmp_path):
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, ["no-such-program", "x"]), lines)
    outcome = await attempt.wait()
    assert outcome.kind == "failed"
    # the init as PID 1 fails to exec it: docker-init (tini) exits 127, podman's catatonit 1
    if engine == "docker":
        assert outcome.reason == "exit code 127 (command not found? argv[0] is 'no-such-program')"
    else:
        assert outcome.exit_code != 0
    assert any("exec" in line and "No such file" in line for line in lines.of("stderr")), lines.got
    await attempt.release()  # what the executor does once the outcome is recorded
    assert gone(backend, attempt.container_id)
    assert not backend.list_running(include_stopped=True)  # nothing left behind


async def test_labels_limits_and_list_running_of_a_running_attempt(backend, engine, tmp_path):
    launch = make_launch(
        tmp_path, ["sh", "-c", "echo up; sleep 60"], attempt=2, cpu=0.5, memory_mb=96, grace_s=0
    )
    lines = Lines()
    attempt = await backend.start(launch, lines)
    try:
        attrs = backend.client.api.inspect_container(attempt.container_id)
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL_JOB] == launch.job_id and labels[LABEL_ATTEMPT] == "2"
        assert labels[LABEL_EXECUTOR] == backend.executor_id
        host = attrs["HostConfig"]
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 96 * 1024 * 1024
        assert attrs["Config"]["Env"].count("TRAINYARD_OUTPUT_DIR=/trainyard/work/outputs") == 1
        if engine == "podman":
            limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
            assert limits["RLIMIT_NOFILE" if "RLIMIT_NOFILE" in limits else "nofile"] == (20000, 20000)
        running = backend.list_running()
        assert [(r.job_id, r.attempt, r.container_id) for r in running] == [
            (launch.job_id, 2, attempt.container_id)
        ]
        other = DockerBackend(base_url=backend.base_url, name=engine, executor_id="someone-else")
        assert launch.job_id not in {r.job_id for r in other.list_running()}
        assert launch.job_id in {r.job_id for r in other.list_running(all_executors=True)}
    finally:
        await attempt.cancel(0)
        outcome = await attempt.wait()
    assert outcome.kind == "cancelled"
    assert backend.list_running() == []


async def test_a_restarted_executor_reaps_the_containers_it_left(backend, engine, tmp_path):
    lines = Lines()
    launch = make_launch(tmp_path, ["sh", "-c", "echo up; sleep 60"])
    attempt = await backend.start(launch, lines)
    assert [r.container_id for r in backend.list_running()] == [attempt.container_id]
    twice = await (await backend.start(launch, Lines())).wait()  # the container name is the fence
    assert twice.kind == "failed" and twice.reason.startswith("attempt already runs in container")
    # the executor "restarts": a new backend object with the same executor id
    again = DockerBackend(base_url=backend.base_url, name=engine, executor_id=backend.executor_id)
    reaped = await again.reap_orphans(grace_s=0)
    assert [r.container_id for r in reaped] == [attempt.container_id]
    assert again.list_running(include_stopped=True) == []
    outcome = await attempt.wait()  # the old handle sees its container stopped under it
    assert outcome.kind == "failed"


# rank 0 listens until a connection brings data (CI once saw an accepted connection with none,
# with podman); rank 1 sends until its send fails after one that worked (rank 0 has heard it and
# stopped listening)
GANG_RENDEZVOUS = (
    'echo "env $RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR";'
    'if [ "$RANK" = 0 ]; then until [ -s /tmp/got ]; do nc -l -p "$MASTER_PORT" > /tmp/got; done;'
    ' echo "master heard: $(cat /tmp/got)";'
    "else i=0; sent=0; while [ $i -le 300 ]; do"
    ' if echo "hello from $RANK" | nc -w 1 "$MASTER_ADDR" "$MASTER_PORT" 2>/dev/null; then sent=1;'
    " elif [ $sent = 1 ]; then break; fi; i=$((i+1)); sleep 0.1; done;"
    " [ $sent = 1 ] || exit 9; echo sent; fi"
)


@pytest.mark.distributed
async def test_a_gang_runs_one_container_per_rank_that_meet_on_their_own_network(backend, tmp_path):
    launch = make_launch(
        tmp_path, ["sh", "-c", GANG_RENDEZVOUS], gang=plan_gang(2, None, free_loopback_port), memory_mb=64
    )
    lines = Lines()
    attempt = await backend.start(launch, lines)
    assert isinstance(attempt, GangAttempt) and len(attempt.container_ids) == 2
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0"), lines.got
    stdout = lines.of("stdout")
    # rank 0 is found by its alias on the attempt's network
    assert "[rank 0] env 0 0 2 trainyard-master" in stdout and "[rank 1] env 1 1 2 trainyard-master" in stdout
    assert "[rank 0] master heard: hello from 1" in stdout and "[rank 1] sent" in stdout
    for rank, container_id in enumerate(attempt.container_ids):
        attrs = backend.client.api.inspect_container(container_id)
        assert attrs["Config"]["Labels"][LABEL_RANK] == str(rank)
        assert attrs["Name"].lstrip("/") == f"trainyard-{launch.job_id}-1-r{rank}"
        assert list(attrs["NetworkSettings"]["Networks"]) == [f"trainyard-{launch.job_id}-1"]
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024  # the spec's resources, per rank
    await attempt.release()
    assert all(gone(backend, c) for c in attempt.container_ids)
    assert not backend.client.networks.list(names=[f"trainyard-{launch.job_id}-1"])  # removed with them


@pytest.mark.distributed
async def test_a_failing_rank_fails_the_gang_and_stops_the_other_containers(backend, tmp_path):
    script = 'echo "rank $RANK up"; [ "$RANK" = 1 ] && exit 3; sleep 60'
    launch = make_launch(
        tmp_path, ["sh", "-c", script], gang=plan_gang(2, None, free_loopback_port), grace_s=1
    )
    attempt = await backend.start(launch, Lines())
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 3, "rank 1: exit code 3")
    assert {backend.client.api.inspect_container(c)["State"]["Running"] for c in attempt.container_ids} == {
        False
    }  # rank 0 did not sleep its 60 s
    await attempt.release()
    assert all(gone(backend, c) for c in attempt.container_ids)


@pytest.mark.distributed
async def test_a_timeout_and_a_cancel_end_every_rank(backend, tmp_path):
    gang = plan_gang(2, None, free_loopback_port)
    timed = make_launch(tmp_path, ["sh", "-c", "sleep 60"], gang=gang, timeout_s=1.0, grace_s=1.0)
    attempt = await backend.start(timed, Lines())
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.reason) == ("timed_out", "timed out after 1s")
    await attempt.release()
    assert all(gone(backend, c) for c in attempt.container_ids)
    lines = Lines()
    script = "trap 'echo stopping; exit 0' TERM; echo ready; sleep 60 & wait"
    cancelled = await backend.start(make_launch(tmp_path, ["sh", "-c", script], gang=gang), lines)

    async def both_ready() -> bool:
        return len([t for t in lines.of("stdout") if t.endswith("ready")]) == 2

    await eventually(both_ready, 30, "both ranks ready")
    await cancelled.cancel(10)
    outcome = await cancelled.wait()
    assert (outcome.kind, outcome.exit_code) == ("cancelled", 0)
    assert sorted(t for t in lines.of("stdout") if "stopping" in t) == [
        "[rank 0] stopping",
        "[rank 1] stopping",
    ]
    await cancelled.release()


@pytest.mark.distributed
async def test_a_gang_left_by_a_dead_executor_is_adopted_whole(backend, engine, tmp_path):
    """Found by its labels after a restart: one attempt with a container per rank, followed to
    its end (lines still tagged by rank), exit codes reported."""
    script = (
        'echo "up $RANK"; while [ ! -f "$TRAINYARD_OUTPUT_DIR/go" ]; do sleep 0.1; done; echo "done $RANK"'
    )
    launch = make_launch(tmp_path, ["sh", "-c", script], gang=plan_gang(2, None, free_loopback_port))
    lines = Lines()
    attempt = await backend.start(launch, lines)

    async def both_up() -> bool:
        return len([t for t in lines.of("stdout") if " up " in t]) == 2

    await eventually(both_up, 30, "both ranks up")
    await attempt.detach()
    again = DockerBackend(base_url=backend.base_url, name=engine, executor_id=backend.executor_id)
    [found] = await again.find_attempts()
    assert (found.job_id, found.attempt) == (launch.job_id, 1)
    assert found.ref.split(",") == attempt.container_ids  # in rank order
    adopted_lines = Lines()
    adopted = await again.adopt(found, adopted_lines)
    (attempt.output_dir / "go").write_text("")
    outcome = await adopted.wait()
    assert (outcome.kind, outcome.exit_code) == ("succeeded", 0)
    assert {"[rank 0] done 0", "[rank 1] done 1"} <= set(adopted_lines.of("stdout"))
    await adopted.release()
    assert await again.find_attempts() == []
    assert not backend.client.networks.list(names=[f"trainyard-{launch.job_id}-1"])  # its network too


async def test_the_checkpoint_dir_is_mounted_and_outlives_the_attempt(backend, tmp_path):
    """Attempt 1 saves a checkpoint when it is told to stop (SIGTERM, with a grace period);
    attempt 2 of the same job finds it at the same TRAINYARD_CHECKPOINT_DIR."""
    # a job id of its own: a fixed one made two runs of the suite on one engine (a busy machine)
    # share container names, and one run's start removed the other's ended container
    job_id = "job-ckpt-" + uuid.uuid4().hex[:8]
    checkpoints = tmp_path / "checkpoints" / job_id
    first = (
        "trap 'echo step=42 > \"$TRAINYARD_CHECKPOINT_DIR/ckpt\"; echo saved; exit 0' TERM;"
        'echo "ready in $TRAINYARD_CHECKPOINT_DIR"; sleep 60 & wait'
    )
    lines = Lines()
    launch = make_launch(tmp_path, ["sh", "-c", first], job_id=job_id, checkpoint_dir=checkpoints)
    attempt = await backend.start(launch, lines)

    async def ready() -> bool:
        return "ready in /trainyard/checkpoints" in lines.of("stdout")

    await eventually(ready, 30, "attempt 1 ready")
    await attempt.cancel(10)
    assert (await attempt.wait()).kind == "cancelled" and "saved" in lines.of("stdout")
    await attempt.release()
    assert (checkpoints / "ckpt").read_text() == "step=42\n"  # on the host, kept
    again = Lines()
    second = make_launch(
        tmp_path,
        ["sh", "-c", 'echo "resumed from $(cat "$TRAINYARD_CHECKPOINT_DIR/ckpt")"'],
        job_id=job_id,
        attempt=2,
        workdir=tmp_path / "work" / job_id / "attempt-2",
        checkpoint_dir=checkpoints,
    )
    resumed = await backend.start(second, again)
    assert (await resumed.wait()).kind == "succeeded"
    await resumed.release()
    assert again.of("stdout") == ["resumed from step=42"]


async def test_capacity_comes_from_the_engine(backend):
    cap = backend.capacity()
    info = backend.client.info()
    assert cap == Resources(cpu=float(info["NCPU"]), memory_mb=info["MemTotal"] // 2**20, gpu=0)
    assert cap.cpu >= 1 and cap.memory_mb > 100


# -- the create request itself (no engine) ---------------------------------------------------------


@pytest.mark.unit
def test_container_config_carries_limits_gpus_labels_and_no_host_paths(tmp_path):
    podman = DockerBackend(client_factory=lambda: None, name="podman", executor_id="exec-p")
    podman._capacity = Resources(cpu=2.0, memory_mb=4096, gpu=0)
    launch = make_launch(
        tmp_path,
        ["python", "train.py", "--lr", "0.1"],
        job_id="jobx",
        env={"PATH": "/host/bin", "HOME": "/root", "LANG": "C.UTF-8", "TZ": "UTC", "A": "1"},
        inherited_env=("PATH", "LANG"),  # HOME came from the spec: it stays
        cpu=8.0,
        memory_mb=2,
        gpu=2,
    )
    out = launch.workdir / "outputs"
    config = podman.container_config(launch, "img:1", out, None)
    assert config["entrypoint"] == ["python"] and config["command"] == ["train.py", "--lr", "0.1"]
    assert config["environment"] == {
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "A": "1",
        "TRAINYARD_OUTPUT_DIR": "/trainyard/work/outputs",
        "TRAINYARD_WORKDIR": "/trainyard/work",
        # trainyard.report(): the reporter and its file, in the mounted work dir
        "TRAINYARD_METRICS_FILE": "/trainyard/work/.trainyard-metrics.jsonl",
        "PYTHONPATH": "/trainyard/work/.trainyard-py",
    }
    assert config["nano_cpus"] == 2_000_000_000  # no more than the engine has
    assert config["mem_limit"] == "6m"  # the engine's minimum
    [gpus] = config["device_requests"]
    assert gpus["Count"] == 2 and gpus["Capabilities"] == [["gpu"]]
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in config["ulimits"]} == {
        ("nofile", 20000, 20000),
        ("nproc", 32768, 32768),
    }
    labels = config["labels"]
    assert {k: labels[k] for k in (LABEL_JOB, LABEL_ATTEMPT, LABEL_EXECUTOR, LABEL_RANK)} == {
        LABEL_JOB: "jobx",
        LABEL_ATTEMPT: "1",
        LABEL_EXECUTOR: "exec-p",
        LABEL_RANK: "0",
    }
    # what an executor that restarted needs to adopt the container (host paths only in labels)
    assert labels["trainyard.workdir"] == str(launch.workdir.resolve())
    assert labels["trainyard.output_dir"] == str(out.resolve()) and "trainyard.gang" not in labels
    assert "network_mode" not in config  # one rank: the engine's default network
    # one mount: the outputs are reached through the work dir (a second mount of a path inside
    # it would be resolved by the engine after a rank of the attempt could have replaced it)
    assert config["volumes"] == {
        str(launch.workdir.resolve()): {"bind": "/trainyard/work", "mode": "rw,nosuid,nodev"}
    }
    assert "working_dir" not in config  # the image's own
    with_source = podman.container_config(launch, "img:1", out, launch.workdir / "src")
    assert with_source["working_dir"] == "/trainyard/work/src"
    docker_config = DockerBackend(client_factory=lambda: None).container_config(launch, "i", out, None)
    assert "ulimits" not in docker_config and "nano_cpus" in docker_config


@pytest.mark.unit
async def test_no_image_anywhere_fails_with_a_reason(tmp_path):
    backend = DockerBackend(client_factory=lambda: None, executor_id="e")
    outcome = await (await backend.start(make_launch(tmp_path, ["true"], image=None), Lines())).wait()
    assert outcome.kind == "failed" and outcome.reason.startswith("no image")


class _ShortFollowContainer:
    """A container whose follow streams end early, as the engines' now and then do."""

    id = "c0ffee"
    attrs: dict[str, Any] = {"State": {"Pid": 42}}
    stored = {"stdout": [b"one\ntw", b"o\nthree\n", b"tail"], "stderr": [b"e1\n", b"e2\n"]}

    def logs(self, stream: bool, follow: bool, stdout: bool, stderr: bool) -> Any:
        chunks = self.stored["stdout" if stdout else "stderr"]
        return iter(chunks[:1] if follow else chunks)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return {"StatusCode": 0}

    def reload(self) -> None:
        return None


@pytest.mark.unit
async def test_what_a_follow_stream_missed_is_read_back_after_the_exit(tmp_path):
    from trainyard_executor.backends.container_attempt import ContainerAttempt

    backend = DockerBackend(client_factory=lambda: None, executor_id="e")
    removed: list[str] = []

    async def remove(container_id: str) -> None:
        removed.append(container_id)

    backend._remove = remove  # type: ignore[method-assign]
    lines = Lines()
    launch = make_launch(tmp_path, ["x"])
    attempt = ContainerAttempt(backend, _ShortFollowContainer(), launch, tmp_path, lines)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded" and removed == []  # kept until the outcome is recorded
    await attempt.release()
    assert removed == ["c0ffee"]
    assert lines.of("stdout") == ["one", "two", "three", "tail"]
    assert lines.of("stderr") == ["e1", "e2"]


class _FollowClosedUnderARead:
    """A follow stream that does not end when the job exits, and raises when it is closed under
    a read (what the HTTP client does): the engines' follow mode on a busy machine."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        self.closed.wait(30)
        raise OSError("read of a closed response")

    def close(self) -> None:
        self.closed.set()


class _SlowFollowContainer(_ShortFollowContainer):
    def logs(self, stream: bool, follow: bool, stdout: bool, stderr: bool) -> Any:
        chunks = self.stored["stdout" if stdout else "stderr"]
        return _FollowClosedUnderARead(chunks[0]) if follow else iter(chunks)


@pytest.mark.unit
async def test_a_follow_stream_closed_under_a_read_is_still_caught_up(tmp_path, monkeypatch):
    """_drain closes a stream that has not ended a while after the exit; the read under way then
    raises, and what the stream had not delivered must still come from the stored log."""
    from trainyard_executor.backends import container_attempt

    monkeypatch.setattr(container_attempt, "LOG_DRAIN_S", 0.1)
    backend = DockerBackend(client_factory=lambda: None, executor_id="e")
    lines = Lines()
    attempt = container_attempt.ContainerAttempt(
        backend, _SlowFollowContainer(), make_launch(tmp_path, ["x"]), tmp_path, lines
    )
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded"
    assert lines.of("stdout") == ["one", "two", "three", "tail"]
    assert lines.of("stderr") == ["e1", "e2"]


class _RemovedUnderAWait(_ShortFollowContainer):
    """A container removed by someone else while the engine holds a wait on it, which the engine
    then never answers (a wait without a timeout would block the attempt forever)."""

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        threading.Event().wait(timeout)  # no answer; with no timeout, never
        raise requests.exceptions.ReadTimeout("no answer")

    def reload(self) -> None:
        raise NotFound("no such container")


@pytest.mark.unit
async def test_a_wait_the_engine_never_answers_ends_once_the_container_is_gone(tmp_path, monkeypatch):
    from trainyard_executor.backends import container_attempt

    monkeypatch.setattr(container_attempt, "WAIT_POLL_S", 0.05)
    monkeypatch.setattr(container_attempt, "LOG_DRAIN_S", 0.1)
    backend = DockerBackend(client_factory=lambda: None, executor_id="e")
    attempt = container_attempt.ContainerAttempt(
        backend, _RemovedUnderAWait(), make_launch(tmp_path, ["x"]), tmp_path, Lines()
    )
    outcome = await asyncio.wait_for(attempt.wait(), 30)  # a deadline, not a timing assertion
    assert outcome.kind == "failed"
    assert outcome.reason == "lost the container: the container was removed before its exit status was read"


async def test_an_attempt_longer_than_one_wait_reports_its_exit_code(backend, tmp_path, monkeypatch):
    """The wait is asked again every WAIT_POLL_S: an attempt that outlasts several still ends with
    its own exit code, on both engines."""
    from trainyard_executor.backends import container_attempt

    monkeypatch.setattr(container_attempt, "WAIT_POLL_S", 1.0)
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, ["sh", "-c", "sleep 3; echo done; exit 7"]), lines)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code) == ("failed", 7) and lines.of("stdout") == ["done"]
    await attempt.release()


# -- a job through scheduler and executor on a container engine ------------------------------------


async def _submit(js: Any, subjects: Any, spec: Any) -> str:
    from trainyard_contracts import JobSubmitted, lifecycle, new_job_id
    from trainyard_contracts._time import utcnow

    job_id = new_job_id()
    kv = await js.key_value(subjects.buckets.jobs)
    record = lifecycle.new_record(job_id, spec, utcnow(), "test")
    await kv.create(job_id, record.model_dump_json().encode())
    event = JobSubmitted(job_id=job_id, spec=spec, submitted_by="test")
    await js.publish(
        event.subject(subjects), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.msg_id()}
    )
    return job_id


async def _stored(js: Any, subject: str, stream: str) -> list[Any]:
    import nats
    from nats.js.api import DeliverPolicy

    if (await js.stream_info(stream)).state.messages == 0:
        return []
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, stream=stream)
    out = []
    try:
        while True:
            out.append(await sub.next_msg(timeout=0.5))
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return out


@pytest.fixture
async def nats_js(nats_server) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.drain()


def _settings(engine: str, monkeypatch: pytest.MonkeyPatch, executor_id: str | None = None) -> Any:
    from trainyard_executor.testkit import quick_executor_settings

    monkeypatch.setenv("TRAINYARD_EXECUTOR_BACKEND", engine)  # as a deployment selects it
    settings = quick_executor_settings(
        executor_id or f"exec-{engine}-{uuid.uuid4().hex[:6]}",
        cpu=2,
        memory=2048,
        docker_host=ENGINE_URLS["docker"],
        podman_socket=ENGINE_URLS["podman"],
    )
    assert settings.backend == engine
    return settings


def _apps(common: Any, settings: Any) -> tuple[Any, Any]:
    from trainyard_executor.app import create_app as executor_app
    from trainyard_scheduler.testkit import quick_scheduler

    sched = quick_scheduler(common)
    return sched, executor_app(common, settings)


def _common(nats_server: Any, prefix: str, tmp_path: Path) -> Any:
    from trainyard_shared.settings import CommonSettings

    return CommonSettings(
        nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "data", log_format="text"
    )


async def _finished(js: Any, subjects: Any, job_id: str, timeout: float = 60) -> Any:
    from trainyard_contracts import JobRecord

    kv = await js.key_value(subjects.buckets.jobs)

    async def probe() -> JobRecord | None:
        record = JobRecord.model_validate_json((await kv.get(job_id)).value)
        return record if record.state.terminal else None

    return await eventually(probe, timeout, f"job {job_id} finished")


@pytest.mark.service
async def test_a_job_with_an_image_runs_through_the_services(
    engine, nats_server, prefix, nats_js, tmp_path, monkeypatch
):
    from trainyard_contracts import JobSpec, Subjects

    settings = _settings(engine, monkeypatch)
    subjects = Subjects(prefix)
    script = 'echo "hello from $TRAINYARD_JOB_ID"; echo to-stderr >&2; echo w > "$TRAINYARD_OUTPUT_DIR/m.txt"'
    spec = JobSpec(name="boxed", image=IMAGE, command=["sh", "-c", script], resources={"memory": 64})
    sched, execu = _apps(_common(nats_server, prefix, tmp_path), settings)
    async with running(sched), running(execu):
        job_id = await _submit(nats_js, subjects, spec)
        record = await _finished(nats_js, subjects, job_id)
    assert record.state.value == "succeeded", record.reason
    assert record.exit_code == 0 and record.attempts[0].executor_id == settings.id
    assert record.outputs_uri
    assert Path(record.outputs_uri.removeprefix("file://"), "m.txt").read_text() == "w\n"
    events = await _stored(nats_js, subjects.job_events(job_id), subjects.streams.jobs)
    assert [json.loads(m.data)["type"] for m in events] == [
        "submitted",
        "queued",
        "scheduled",
        "running",
        "succeeded",
    ]
    chunks = await _stored(nats_js, subjects.logs_of(job_id), subjects.streams.logs)
    lines = [(line["stream"], line["text"]) for m in chunks for line in json.loads(m.data)["lines"]]
    assert ("stdout", f"hello from {job_id}") in lines and ("stderr", "to-stderr") in lines
    leftover = DockerBackend(base_url=ENGINE_URLS[engine], name=engine, executor_id=settings.id)
    assert leftover.list_running(include_stopped=True) == []


@pytest.mark.service
@pytest.mark.distributed
async def test_a_gang_split_across_two_container_executors_meets_and_succeeds(
    engine, nats_server, prefix, nats_js, tmp_path, monkeypatch
):
    """Two executors on one engine, each with room for one rank: the scheduler splits the gang,
    each member runs its rank in a container on the host network, and rank 1 reaches rank 0 at
    the MASTER_ADDR:MASTER_PORT the scheduler chose (from the executors' rendezvous range)."""
    from trainyard_contracts import JobSpec, Subjects

    port = free_loopback_port()
    members = []
    for name in ("a", "b"):
        settings = _settings(engine, monkeypatch, f"exec-{engine}-split{name}-{uuid.uuid4().hex[:4]}")
        members.append(
            settings.model_copy(update={"rendezvous_port_first": port, "rendezvous_port_last": port})
        )
    subjects = Subjects(prefix)
    spec = JobSpec(
        name="split-boxed",
        image=IMAGE,
        command=["sh", "-c", GANG_RENDEZVOUS],
        replicas=2,
        resources={"cpu": 2, "memory": 64},  # each executor (2 cpu) has room for one rank only
    )
    common = _common(nats_server, prefix, tmp_path)
    sched, first = _apps(common, members[0])
    from trainyard_executor.app import create_app as executor_app

    async with running(sched), running(first), running(executor_app(common, members[1])):
        job_id = await _submit(nats_js, subjects, spec)
        record = await _finished(nats_js, subjects, job_id, timeout=90)
    chunks = await _stored(nats_js, subjects.logs_of(job_id), subjects.streams.logs)
    texts = [line["text"] for m in chunks for line in json.loads(m.data)["lines"]]
    assert record.state.value == "succeeded", (record.reason, texts)
    gang = record.gang
    assert gang is not None and gang.master_port == port and gang.world_size == 2
    assert {m.executor_id for m in gang.members} == {m.id for m in members}
    assert all(m.state is not None and m.state.value == "succeeded" for m in gang.members)
    assert any("master heard: hello from 1" in t for t in texts), texts
    assert any(t.endswith("sent") for t in texts), texts
    for settings in members:
        leftover = DockerBackend(base_url=ENGINE_URLS[engine], name=engine, executor_id=settings.id)
        assert leftover.list_running(include_stopped=True) == []


async def _orphaned(nats_js: Any, subjects: Any, job_id: str, executor_id: str, *, superseded: bool) -> Any:
    """What a crashed executor leaves in the record: attempt 1 running on it (or, when the
    scheduler noticed the lost lease first, requeued as attempt 2)."""
    from trainyard_contracts import (
        AttemptRef,
        Capacity,
        ExecutorHeartbeat,
        JobRecord,
        JobState,
        lifecycle,
    )
    from trainyard_contracts._time import utcnow

    kv = await nats_js.key_value(subjects.buckets.jobs)

    async def queued() -> Any:
        entry = await kv.get(job_id)
        record = JobRecord.model_validate_json(entry.value)
        return (entry, record) if record.state == JobState.QUEUED else None

    entry, record = await eventually(queued, 30, "queued")
    now = utcnow()
    orphan = lifecycle.start(lifecycle.schedule(record, executor_id, now), now)
    if superseded:
        orphan = lifecycle.requeue(orphan, now, reason="executor_lost", counts_as_retry=False)
    else:
        # the crashed executor's lease has not run out yet (else the scheduler requeues the job)
        beat = ExecutorHeartbeat(
            executor_id=executor_id,
            backend="docker",
            capacity=Capacity(cpu=2, memory=2048),
            running=[AttemptRef(job_id=job_id, attempt=1)],
            time=now,
            lease_seconds=60,
        )
        executors = await nats_js.key_value(subjects.buckets.executors)
        await executors.put(executor_id, beat.model_dump_json().encode())
    await kv.update(job_id, orphan.model_dump_json().encode(), last=entry.revision)
    return orphan


@pytest.mark.service
async def test_a_restarted_executor_adopts_the_container_of_the_current_attempt(
    engine, nats_server, prefix, nats_js, tmp_path, monkeypatch
):
    """The executor died while attempt 1 ran; its container kept running. The new executor
    follows it to its end (logs included) instead of running the job again."""
    from trainyard_contracts import JobSpec, JobState, Subjects

    settings = _settings(engine, monkeypatch)
    subjects = Subjects(prefix)
    script = 'echo first; while [ ! -f "$TRAINYARD_OUTPUT_DIR/go" ]; do sleep 0.1; done; echo second; exit 0'
    spec = JobSpec(name="adopted", image=IMAGE, command=["sh", "-c", script], resources={"memory": 64})
    sched, execu = _apps(_common(nats_server, prefix, tmp_path), settings)
    async with running(sched):
        job_id = await _submit(nats_js, subjects, spec)
        await _orphaned(nats_js, subjects, job_id, settings.id, superseded=False)
        before = DockerBackend(base_url=ENGINE_URLS[engine], name=engine, executor_id=settings.id)
        lines = Lines()
        env = {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"}
        old = await before.start(make_launch(tmp_path, ["sh", "-c", script], job_id=job_id, env=env), lines)
        await eventually(lambda: _true("first" in lines.of("stdout")), 30, "attempt 1 running")
        await old.detach()  # the executor that started it is gone
        async with running(execu):
            kv = await nats_js.key_value(subjects.buckets.executors)

            async def listed() -> bool:
                try:
                    beat = json.loads((await kv.get(settings.id)).value)
                except Exception:
                    return False
                return any(r["job_id"] == job_id for r in beat["running"])

            await eventually(listed, 30, "the adopted attempt in the heartbeat")
            (old.output_dir / "go").write_text("")
            done = await _finished(nats_js, subjects, job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 1 and done.exit_code == 0
    assert gone(before, old.container_id)
    events = await _stored(nats_js, subjects.job_events(job_id), subjects.streams.jobs)
    assert "requeued" not in [json.loads(m.data)["type"] for m in events]
    chunks = await _stored(nats_js, subjects.logs_of(job_id), subjects.streams.logs)
    text = [line["text"] for m in chunks for line in json.loads(m.data)["lines"]]
    assert "second" in text and any("adopted by" in t for t in text)


@pytest.mark.service
async def test_a_restarted_executor_stops_a_superseded_container_and_the_job_runs_once_more(
    engine, nats_server, prefix, nats_js, tmp_path, monkeypatch
):
    """The executor crashed while attempt 1 ran and the scheduler has requeued the job since:
    on start the executor stops that container before it takes any new work, so the job's
    attempts never run at the same time. (Its first heartbeat may let the scheduler place attempt 2
    here while it recovers: that attempt is left to its start command, not requeued as lost.)"""
    from trainyard_contracts import JobSpec, JobState, Subjects

    settings = _settings(engine, monkeypatch)
    subjects = Subjects(prefix)
    script = '[ "$TRAINYARD_ATTEMPT" = 2 ] && exit 0; echo first; sleep 120'
    spec = JobSpec(name="crashed", image=IMAGE, command=["sh", "-c", script], resources={"memory": 64})
    sched, execu = _apps(_common(nats_server, prefix, tmp_path), settings)
    async with running(sched):
        job_id = await _submit(nats_js, subjects, spec)
        await _orphaned(nats_js, subjects, job_id, settings.id, superseded=True)
        before = DockerBackend(base_url=ENGINE_URLS[engine], name=engine, executor_id=settings.id)
        lines = Lines()
        env = {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"}
        old = await before.start(make_launch(tmp_path, ["sh", "-c", script], job_id=job_id, env=env), lines)
        await eventually(lambda: _true("first" in lines.of("stdout")), 30, "attempt 1 running")
        async with running(execu):
            done = await _finished(nats_js, subjects, job_id)
    assert gone(before, old.container_id)
    assert (await old.wait()).kind == "failed"  # stopped under it (it would have slept 120 s)
    assert done.state == JobState.SUCCEEDED and done.attempt == 2
    assert done.attempts[0].state == JobState.REQUEUED and done.retries_used == 0
    assert before.list_running(include_stopped=True) == []


async def _true(value: bool) -> bool:
    return value
