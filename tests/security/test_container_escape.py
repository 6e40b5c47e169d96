"""A job in a Docker or Podman container cannot reach the host through the paths the executor
touches, and runs without privileges (issue 13: "a job chooses a host mount").

Real engines, the 2 MB busybox test image (``trainyard_executor.testengines``); each test runs
once per engine and is skipped when that engine cannot be reached (unless required by
``TRAINYARD_TEST_REQUIRE_ENGINES``).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from trainyard_executor.backends.docker import DockerBackend
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import Lines, make_launch

pytestmark = pytest.mark.security
pytest_plugins = ["trainyard_executor.testengines"]  # the engine and backend fixtures


def _repo_with_outputs_link(tmp_path: Path, target: Path) -> tuple[str, str]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.sh").write_text('echo ran > "$TRAINYARD_OUTPUT_DIR/owned"\n')
    (repo / "outputs").symlink_to(target)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "outputs is a link"]):
        subprocess.run([*git, *args], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return str(repo), commit.stdout.strip()


async def test_a_repository_that_commits_outputs_as_a_link_is_refused(backend: DockerBackend, tmp_path):
    """The link is neither followed, chmodded nor mounted: the attempt fails naming it, and no
    container is created."""
    victim = tmp_path / "host-secrets"
    victim.mkdir(mode=0o700)
    (victim / "key").write_text("secret\n")
    repo, commit = _repo_with_outputs_link(tmp_path, victim)
    launch = make_launch(tmp_path, ["sh", "train.sh"], source_repo=repo, source_commit=commit)
    attempt = await backend.start(launch, Lines())
    outcome = await attempt.wait()
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == (
        "could not prepare the work dir: outputs.path 'outputs': "
        "'src/outputs' is a symbolic link: refused (links are not followed)"
    )
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700
    assert sorted(p.name for p in victim.iterdir()) == ["key"]
    assert backend.list_running(include_stopped=True) == []


@pytest.mark.parametrize("planted", ["file", "dir"])
async def test_a_link_the_job_plants_for_the_log_cursor_is_not_written_through(
    backend: DockerBackend, tmp_path, planted
):
    """The executor keeps its log cursor in the mounted work dir (``.trainyard/``). The job
    plants links there: every name the cursor writer uses pointing at a host file ("file"), or
    the whole directory replaced by a link to a host directory ("dir"). The host file stays
    intact, the host directory empty; the executor's own cursor is still written."""
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("precious\n")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    meta = "/trainyard/work/.trainyard"
    names = ["container-0-cursor.json", "container-0-cursor.json.tmp"]
    if planted == "file":
        links = "; ".join(f"ln -sf {victim_file} {meta}/{n}" for n in names)
        # as root the job writes in .trainyard; as a non-root user it swaps in a directory of its own
        script = f"{{ {links}; }} 2>/dev/null || {{ mv {meta} {meta}.old; mkdir {meta}; {links}; }}"
    else:
        script = f"rm -rf {meta} 2>/dev/null || mv {meta} {meta}.old; ln -s {victim_dir} {meta}"
    script += "; echo planted; sleep 2.5"  # the cursor is written every second and at the end
    lines = Lines()
    outcome = await (await backend.start(make_launch(tmp_path, ["sh", "-c", script]), lines)).wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert lines.of("stdout") == ["planted"]
    assert victim_file.read_text() == "precious\n"
    assert list(victim_dir.iterdir()) == []


async def test_the_container_runs_as_a_non_root_user_without_privileges(backend, engine, tmp_path):
    """Non-root uid, no capabilities, no new privileges, a pids limit, nosuid/nodev on Podman's
    mounts (Docker's binds take no such option: no-new-privileges and the dropped MKNOD stand in);
    the directories it writes to were given to its uid, not chmodded."""
    script = (
        "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status;"
        " grep ' /trainyard/work ' /proc/self/mountinfo;"
        ' echo m > "$TRAINYARD_OUTPUT_DIR/model"; echo c > "$TRAINYARD_CHECKPOINT_DIR/ckpt";'
        " echo w > /trainyard/work/scratch; echo written; sleep 30"
    )
    checkpoints = tmp_path / "checkpoints" / "job-priv"
    launch = make_launch(tmp_path, ["sh", "-c", script], checkpoint_dir=checkpoints)
    lines = Lines()
    attempt = await backend.start(launch, lines)
    try:
        attrs = backend.client.api.inspect_container(attempt.container_id)
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "10001:10001"
        assert not host.get("CapAdd")  # (Podman lists every dropped capability instead of ALL)
        assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"])
        assert host["PidsLimit"] == 4096
        # stopped only once its files are written (a loaded machine may not have run them yet)
        deadline = asyncio.get_running_loop().time() + 60
        while "written" not in lines.of("stdout"):
            assert asyncio.get_running_loop().time() < deadline, ("the job wrote nothing in 60 s", lines.got)
            await asyncio.sleep(0.05)
    finally:
        await attempt.cancel(0)
    outcome = await attempt.wait()
    out = lines.of("stdout")
    assert out[:2] == ["10001", "10001"], (outcome.reason, lines.got)
    status = dict(line.split(":\t") for line in out[2:5])
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}
    if engine == "podman":
        assert {"nosuid", "nodev"} <= set(out[5].split()[5].split(",")), out[5]
    for written in (outcome.output_dir / "model", checkpoints / "ckpt", launch.workdir / "scratch"):
        assert written.stat().st_uid == 10001, written
    for made in (outcome.output_dir, checkpoints, launch.workdir):
        assert stat.S_IMODE(made.stat().st_mode) == 0o755, made  # given away, not opened to all
    meta = launch.workdir / ".trainyard"
    assert meta.stat().st_uid == os.geteuid()  # the executor's own: the job cannot write there
    assert json.loads((meta / "container-0-cursor.json").read_text())["stdout"] > 0


async def test_run_as_root_keeps_the_image_user_but_not_mknod_nor_new_privileges(backend, tmp_path):
    launch = make_launch(
        tmp_path,
        ["sh", "-c", "id -u; grep NoNewPrivs /proc/self/status; mknod /tmp/disk b 8 0 || echo refused"],
        run_as_root=True,
    )
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert lines.of("stdout") == ["0", "NoNewPrivs:\t1", "refused"]


# rank 0 listens until a connection brings data; rank 1 sends until a send worked and then fails
# (rank 0 heard it and stopped listening)
RENDEZVOUS = (
    'if [ "$RANK" = 0 ]; then until [ -s /tmp/got ]; do nc -l -p "$MASTER_PORT" > /tmp/got; done;'
    ' echo "master heard: $(cat /tmp/got)";'
    "else i=0; sent=0; while [ $i -le 300 ]; do"
    ' if echo "hello from $RANK" | nc -w 1 "$MASTER_ADDR" "$MASTER_PORT" 2>/dev/null; then sent=1;'
    " elif [ $sent = 1 ]; then break; fi; i=$((i+1)); sleep 0.1; done;"
    " [ $sent = 1 ] || exit 9; echo sent; fi"
)


@pytest.mark.distributed
async def test_a_gangs_ranks_reach_each_other_but_not_the_hosts_loopback(backend: DockerBackend, tmp_path):
    """NATS, MLflow and the monitor listen on the host's loopback: a listener there (started
    here) gets no connection from a gang's ranks, which still meet each other at MASTER_ADDR."""
    connections: list[str] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    probe = (
        f"if nc -w 2 127.0.0.1 {port} </dev/null 2>/dev/null; then echo reached-host;"
        " else echo host-unreachable; fi; "
    )
    launch = make_launch(
        tmp_path, ["sh", "-c", probe + RENDEZVOUS], gang=plan_gang(2, None, free_loopback_port)
    )
    lines = Lines()
    try:
        attempt = await backend.start(launch, lines)
        outcome = await attempt.wait()
        await attempt.release()
    finally:
        server.close()
        await server.wait_closed()
    stdout = lines.of("stdout")
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert sorted(t for t in stdout if "host" in t) == [
        "[rank 0] host-unreachable",
        "[rank 1] host-unreachable",
    ]
    assert connections == []
    assert "[rank 0] master heard: hello from 1" in stdout and "[rank 1] sent" in stdout
    assert not backend.client.networks.list(names=[f"trainyard-{launch.job_id}-1"])
