"""The init container of a Kubernetes job pod (``python -m trainyard_executor.fetch``) against a
real nats-server running the deployed users (deploy/nats/natsauth.py, as
test_nats_least_privilege.py): the ``fetcher`` user reads a packed workdir and steps' outputs
folders by digest and can do nothing else; the entry unpacks them as hostile input, refuses a
hostile archive and a user without rights, naming why, and never prints the password.

The entry runs as the pod would run it: a separate process, its argv built by the executor
(kube_fetch.fetch_plan), its password in the environment. Where it writes is a temporary folder
standing for the pod's volumes (no kubelet runs here)."""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.fetch import PASSWORD_VARIABLE, USER_VARIABLE, FetchPlan
from trainyard_shared.blobs import get_blob, open_store, pack_dir, put_blob

from ..deploy.natsconf import password_for
from .test_nats_least_privilege import S, admin, attempt, connected, refusal, server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.security, pytest.mark.nats_auth, pytest.mark.service]


def _folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _hostile() -> bytes:
    """A tar whose member climbs out of the folder it is unpacked into."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("a/../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return gzip.compress(buffer.getvalue(), mtime=0)


def _run(plan: FetchPlan, user: str, tmp_path: Path) -> tuple[int, str, str]:
    """The entry as a pod runs it; (exit code, stderr, termination message)."""
    log = tmp_path / "termination-log"
    env = {**os.environ, USER_VARIABLE: user, PASSWORD_VARIABLE: password_for(user)}
    done = subprocess.run(
        [*plan.argv(sys.executable), "--termination-log", str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert password_for(user) not in done.stdout + done.stderr  # never printed
    return done.returncode, done.stderr, log.read_text() if log.exists() else ""


def _plan(server_url: str, tmp_path: Path, **kw: object) -> FetchPlan:
    work, inputs = tmp_path / "work", tmp_path / "inputs"
    work.mkdir(exist_ok=True)
    inputs.mkdir(exist_ok=True)
    base: dict[str, object] = {
        "nats_url": server_url,
        "prefix": S.prefix,
        "work_dir": str(work),
        "inputs_dir": str(inputs),
        "timeout_s": 60.0,
    }
    return FetchPlan(**{**base, **kw})  # type: ignore[arg-type]


async def test_the_fetcher_unpacks_a_workdir_and_inputs_by_digest(server, admin, tmp_path: Path):  # noqa: F811
    """A real packed workdir and two steps' outputs folders in, the pod's folders out: the workdir
    in ``<work>/src``, each step's in ``<inputs>/<step>/``."""
    workdir = pack_dir(_folder(tmp_path / "wd", {"train.py": "print('hi')\n", "conf/lr.txt": "0.1"}))
    prep = pack_dir(_folder(tmp_path / "prep", {"data.csv": "a,b\n1,2\n"}))
    shard = pack_dir(_folder(tmp_path / "shard", {"part.txt": "shard 1"}))
    await put_blob(await open_store(admin.js, S.workdirs_bucket), workdir.archive)
    outputs = await open_store(admin.js, S.step_outputs_bucket)
    await put_blob(outputs, prep.archive)
    await put_blob(outputs, shard.archive)
    plan = _plan(
        server.url,
        tmp_path,
        workdir=workdir.digest,
        inputs=(("prep", prep.digest), ("shards/1", shard.digest)),
    )
    code, stderr, _ = await asyncio.to_thread(_run, plan, "fetcher", tmp_path)
    assert code == 0, stderr
    assert (tmp_path / "work/src/train.py").read_text() == "print('hi')\n"
    assert (tmp_path / "work/src/conf/lr.txt").read_text() == "0.1"
    assert (tmp_path / "inputs/prep/data.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "inputs/shards/1/part.txt").read_text() == "shard 1"


async def test_a_hostile_archive_is_refused_and_nothing_escapes(server, admin, tmp_path: Path):  # noqa: F811
    digest, _ = await put_blob(await open_store(admin.js, S.step_outputs_bucket), _hostile())
    plan = _plan(server.url, tmp_path, inputs=(("prep", digest),))
    code, stderr, message = await asyncio.to_thread(_run, plan, "fetcher", tmp_path)
    assert code == 1
    assert "the outputs of step prep are refused" in message and "'..'" in message, message
    assert message in stderr
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "inputs" / "escaped.txt").exists()


async def test_a_digest_not_stored_fails_naming_it(server, admin, tmp_path: Path):  # noqa: F811
    missing = "sha256:" + "ab" * 32
    code, _, message = await asyncio.to_thread(
        _run, _plan(server.url, tmp_path, workdir=missing), "fetcher", tmp_path
    )
    assert code == 1 and f"the packed workdir {missing}" in message and "not stored" in message


async def test_a_user_without_rights_on_the_buckets_is_refused(server, admin, tmp_path: Path):  # noqa: F811
    """The entry run as ``telemetry`` (which may not read the buckets): the server refuses the read
    and the entry says so; nothing is unpacked."""
    packed = pack_dir(_folder(tmp_path / "wd", {"train.py": "x"}))
    await put_blob(await open_store(admin.js, S.workdirs_bucket), packed.archive)
    plan = _plan(server.url, tmp_path, workdir=packed.digest, timeout_s=6.0)
    code, _, message = await asyncio.to_thread(_run, plan, "telemetry", tmp_path)
    assert code == 1 and f"the packed workdir {packed.digest}" in message
    assert "permissions violation" in message.lower() and "telemetry" in message
    assert not (tmp_path / "work" / "src").exists()


async def test_the_fetcher_reads_the_two_buckets_and_nothing_else(server, admin):  # noqa: F811
    """``fetcher`` may read a workdir and a step's outputs; it may not add one (either bucket),
    purge one, read a job record or publish an event: each refusal is the server's own."""
    data = b"a packed folder, as far as the buckets know"
    for bucket in (S.workdirs_bucket, S.step_outputs_bucket):
        digest, _ = await put_blob(await open_store(admin.js, bucket), data)
        async with connected(server, "fetcher") as fetcher:
            store = await open_store(fetcher.js, bucket)
            assert await get_blob(store, digest, max_bytes=1024) == data
            await attempt(fetcher, store.put("sha256:" + "1" * 64, b"forged"), f"$O.{bucket}.C.")
    async with connected(server, "fetcher") as fetcher:
        stream = f"OBJ_{S.workdirs_bucket}"
        await attempt(fetcher, fetcher.js.purge_stream(stream), f"$JS.API.STREAM.PURGE.{stream}")
    async with connected(server, "fetcher") as fetcher:
        await attempt(
            fetcher, fetcher.js.key_value(S.buckets.jobs), f"$JS.API.STREAM.INFO.KV_{S.buckets.jobs}"
        )
    async with connected(server, "fetcher") as fetcher:
        event = S.job_event_kind("succeeded").replace("*", "0abc")
        await fetcher.nc.publish(event, b"{}")
        await fetcher.nc.flush()
        await refusal(fetcher, event)


async def test_the_init_container_of_a_real_manifest_fetches_with_its_secret(server, admin, tmp_path: Path):  # noqa: F811
    """The Job the kubernetes backend makes, run as a kubelet would run its ``fetch`` init container
    (the test is that kubelet: the command as written, the env with its ``secretKeyRef`` resolved
    from the attempt's Secret, the pod's volumes as folders): the step's folder arrives, and the job
    container's env references nothing of the Secret but what the job's own secrets are."""
    from trainyard_executor.backends.base import Resources
    from trainyard_executor.backends.kube_fetch import FETCH_CONTAINER, FetchOptions
    from trainyard_executor.backends.kube_manifests import KubeOptions, job_manifest
    from trainyard_executor.backends.kubernetes import KubernetesBackend
    from trainyard_executor.jobenv import HOST_ONLY_ENV
    from trainyard_executor.kubeemulator import sample_launch

    prep = pack_dir(_folder(tmp_path / "prep", {"split/train.csv": "x,y\n"}))
    await put_blob(await open_store(admin.js, S.step_outputs_bucket), prep.archive)
    fetch = FetchOptions(
        image="trainyard/executor:test",
        nats_url=server.url,
        prefix=S.prefix,
        password=password_for("fetcher"),
    )
    opts = KubeOptions(namespace="trainyard-jobs", default_image="python:3.11-slim", fetch=fetch)
    launch = sample_launch(tmp_path, input_digests=(("prepare", prep.digest),))
    manifest = job_manifest(launch, opts, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    backend = KubernetesBackend(lambda: None, opts, Resources(cpu=1.0, memory_mb=1024, gpu=0))  # type: ignore[arg-type,return-value]
    secret = backend.secret_of(manifest, launch)
    assert secret is not None
    (init,) = manifest["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == FETCH_CONTAINER
    volumes = {"/trainyard/inputs": tmp_path / "pod-inputs", "/trainyard/work": tmp_path / "pod-work"}
    for folder in volumes.values():
        folder.mkdir()
    argv = [str(volumes.get(a, a)) for a in init["command"]]
    argv[0] = sys.executable  # the image's python: this test's
    done = await asyncio.to_thread(
        subprocess.run,
        [*argv, "--termination-log", str(tmp_path / "log")],
        env=_as_the_kubelet_sets(init, secret),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pod-inputs/prepare/split/train.csv").read_text() == "x,y\n"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert not [e for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]


def _as_the_kubelet_sets(container: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet gives it: each ``secretKeyRef`` resolved from the
    attempt's Secret (the only Secret it may name)."""
    env = dict(os.environ)
    for entry in container["env"]:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        assert ref is None or ref["name"] == secret["metadata"]["name"]
        env[entry["name"]] = secret["stringData"][ref["key"]] if ref else entry["value"]
    return env


async def test_the_fetch_container_a_kubeflow_runtime_declares_fetches_from_the_trainjobs_patch(
    server,  # noqa: F811
    admin,  # noqa: F811
    tmp_path: Path,
):
    """The TrainJob the kubeflow backend makes for a step with inputs: its runtime patch gives the
    init container the runtime declares (fixed argv ``... fetch --plan-from-env``) the plan in its
    env and the password by reference to the attempt's Secret. Run as a kubelet would run it
    (the test is that kubelet): the step's folder arrives; with no plan, it exits 0 having fetched
    nothing (the runtime runs it in every TrainJob's pods)."""
    from trainyard_executor.backends.base import Resources
    from trainyard_executor.backends.kube_fetch import FetchOptions
    from trainyard_executor.backends.kube_manifests import KubeOptions
    from trainyard_executor.backends.kube_trainjob import TrainerOptions, trainjob_manifest
    from trainyard_executor.backends.kubeflow import KubeflowBackend
    from trainyard_executor.fetch import MODULE, PLAN_FROM_ENV, PLAN_VARIABLE
    from trainyard_executor.jobenv import HOST_ONLY_ENV
    from trainyard_executor.kubeemulator import sample_launch

    prep = pack_dir(_folder(tmp_path / "prep", {"split/train.csv": "x,y\n"}))
    await put_blob(await open_store(admin.js, S.step_outputs_bucket), prep.archive)
    fetch = FetchOptions(
        image="unused", nats_url=server.url, prefix=S.prefix, password=password_for("fetcher")
    )
    opts = KubeOptions(namespace="trainyard", default_image="python:3.11-slim", fetch=fetch)
    trainer = TrainerOptions(fetch_container="trainyard-fetch")
    launch = sample_launch(tmp_path, input_digests=(("prepare", prep.digest),))
    manifest = trainjob_manifest(
        launch, opts, trainer, HOST_ONLY_ENV, output_dir="/out", started_at=1.0, fetch=fetch
    )
    backend = KubeflowBackend(lambda: None, opts, Resources(cpu=1.0, memory_mb=1024, gpu=0), trainer=trainer)  # type: ignore[arg-type,return-value]
    secret = backend.secret_of(manifest, launch)
    assert secret is not None
    assert password_for("fetcher") not in json.dumps(manifest)
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    (init,) = job["template"]["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "trainyard-fetch"
    env = _as_the_kubelet_sets(init, secret)
    pod_inputs = tmp_path / "pod-inputs"
    pod_inputs.mkdir()
    plan = [str(pod_inputs) if a == "/trainyard/inputs" else a for a in json.loads(env[PLAN_VARIABLE])]
    env[PLAN_VARIABLE] = json.dumps([*plan, "--termination-log", str(tmp_path / "log")])
    runtime_argv = [sys.executable, "-m", MODULE, PLAN_FROM_ENV]  # what the runtime declares
    run = functools.partial(subprocess.run, runtime_argv, capture_output=True, text=True, timeout=120)
    done = await asyncio.to_thread(run, env=env)
    assert done.returncode == 0, done.stderr
    assert password_for("fetcher") not in done.stdout + done.stderr
    assert (pod_inputs / "prepare/split/train.csv").read_text() == "x,y\n"

    idle = await asyncio.to_thread(run, env={k: v for k, v in env.items() if k != PLAN_VARIABLE})
    assert idle.returncode == 0 and "nothing to fetch" in idle.stderr, idle.stderr
    bad = await asyncio.to_thread(run, env={**env, PLAN_VARIABLE: '{"not": "a list"}'})
    assert bad.returncode == 2 and PLAN_VARIABLE in bad.stderr, bad.stderr
