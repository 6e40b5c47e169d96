"""A pipeline step's outputs folder, packed by its executor and unpacked for a dependent
(stepfolders.py), on a real nats-server's Object Store: stored once by digest, fetched once per
executor, unpacked as hostile input; a link the job planted is never followed; the container
backends bind the inputs folder read-only at /trainyard/inputs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec, Subjects, lifecycle
from trainyard_contracts.spec import StepInput
from trainyard_executor.backends.docker import INPUTS_MOUNT, DockerBackend
from trainyard_executor.jobenv import job_env
from trainyard_executor.stepfolders import StepFolders, StepFoldersError, archive_cap
from trainyard_executor.testengines import make_launch
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.blobs import PackLimits, open_store
from trainyard_shared.bus import declare, object_store_configs

pytestmark = [pytest.mark.workflow]
NOW = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.fixture
async def folders(nats_client, prefix, tmp_path) -> StepFolders:
    js = nats_client.jetstream()
    subjects = Subjects(prefix)
    await declare(js, object_store_configs(subjects))

    async def store():  # type: ignore[no-untyped-def]
        return await open_store(js, subjects.step_outputs_bucket)

    limits = PackLimits(max_bytes=64 * 1024, max_files=100)
    cache = WorkdirCache(store, tmp_path / "cache", archive_cap(limits), what="packed outputs folder")
    return StepFolders(store, cache, limits, max_inputs_bytes=96 * 1024)


def outputs_of(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A finished attempt's outputs folder, as the backend leaves it: <work>/<job>/attempt-1/outputs."""
    out = tmp_path / "work" / "job-1" / "attempt-1" / "outputs"
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.service
async def test_a_folder_is_stored_once_and_unpacked_for_each_dependent(folders, tmp_path):
    out = outputs_of(tmp_path, {"data/split.txt": b"rows=1797\n", "model.bin": b"\x00" * 1000})
    digest = await folders.share(out, "outputs")
    assert await folders.share(out, "outputs") == digest  # the same content: the same name, not put again
    store = await folders.store()
    assert [info.name for info in await store.list()] == [digest]

    for n in range(3):  # a fan-out on one executor: fetched once into its cache
        inputs = await folders.prepare([StepInput(path="prepare", digest=digest)], tmp_path / f"in-{n}")
        assert (
            inputs is not None and (inputs / "prepare" / "data" / "split.txt").read_bytes() == b"rows=1797\n"
        )
    assert len(list((tmp_path / "cache").glob("*.tar.gz"))) == 1
    assert await folders.prepare([], tmp_path / "none") is None


@pytest.mark.service
async def test_an_array_dependency_is_unpacked_per_index_within_the_total_cap(folders, tmp_path):
    digests = []
    for i in range(3):
        out = outputs_of(tmp_path / str(i), {"model.txt": f"model {i}".encode(), "w.bin": os.urandom(40_000)})
        digests.append(await folders.share(out, "outputs"))
    entries = [StepInput(path=f"train/{i}", digest=d) for i, d in enumerate(digests)]
    with pytest.raises(StepFoldersError, match="more than the 98304 bytes"):
        await folders.prepare(entries, tmp_path / "in")  # 3 x 40 KB over the 96 KiB of all inputs
    two = await folders.prepare(entries[:2], tmp_path / "in")  # made afresh
    assert two is not None and (two / "train" / "1" / "model.txt").read_text() == "model 1"
    assert sorted(p.name for p in (two / "train").iterdir()) == ["0", "1"]


@pytest.mark.service
async def test_a_link_out_of_the_folder_or_in_place_of_it_is_never_followed(folders, tmp_path):
    secret = tmp_path / "executor-secret"
    secret.write_text("not the job's")
    out = outputs_of(tmp_path, {"ok.txt": b"ok"})
    (out / "leak").symlink_to(secret)
    with pytest.raises(StepFoldersError, match="leak is a symbolic link"):
        await folders.share(out, "outputs")
    # the outputs folder itself replaced by a link to a host folder
    (out / "leak").unlink()
    elsewhere = out.parent / "real-outputs"
    out.rename(elsewhere)
    out.symlink_to(tmp_path)
    with pytest.raises(StepFoldersError, match="cannot be read"):
        await folders.share(out, "outputs")
    store = await folders.store()
    assert not [info for info in await _listed(store)]


async def _listed(store):  # type: ignore[no-untyped-def]
    try:
        return await store.list()
    except Exception:  # nats-py raises when the bucket holds no object
        return []


@pytest.mark.service
async def test_no_outputs_folder_passes_nothing_and_fails_nothing(folders, tmp_path):
    out = outputs_of(tmp_path, {})
    out.rmdir()  # the job removed the folder made for it
    assert await folders.share(out, "outputs") is None


@pytest.mark.service
async def test_a_folder_over_the_cap_names_its_biggest_files(folders, tmp_path):
    out = outputs_of(tmp_path, {"weights.bin": b"\x00" * 100_000, "small.txt": b"s"})
    with pytest.raises(StepFoldersError, match=r"passed to later steps: .*weights\.bin"):
        await folders.share(out, "outputs")


@pytest.mark.unit
def test_the_inputs_folder_is_the_jobs_variable_and_a_read_only_mount(tmp_path):
    inputs = tmp_path / "work" / "job-1" / "attempt-1.inputs"
    env = job_env(
        lifecycle.new_record("job-1", JobSpec(name="use", command=["true"]), NOW, None),
        1,
        {},
        (),
        None,
        inputs_dir=inputs,
    )
    assert env["TRAINYARD_INPUTS"] == str(inputs)
    launch = make_launch(tmp_path, ["sh"], env=env, inputs_dir=inputs)
    for engine, mode in (("docker", "ro"), ("podman", "ro,nosuid,nodev")):
        backend = DockerBackend(client_factory=lambda: None, name=engine, executor_id="exec-c")
        config = backend.container_config(launch, "img:1", launch.workdir / "outputs", None)
        assert config["environment"]["TRAINYARD_INPUTS"] == INPUTS_MOUNT
        assert config["volumes"][str(inputs.resolve())] == {"bind": INPUTS_MOUNT, "mode": mode}
    plain = make_launch(tmp_path, ["sh"], env={})
    config = DockerBackend(client_factory=lambda: None, name="docker").container_config(
        plain, "img:1", plain.workdir / "outputs", None
    )
    assert "TRAINYARD_INPUTS" not in config["environment"]
    assert all(v["bind"] != INPUTS_MOUNT for v in config["volumes"].values())
