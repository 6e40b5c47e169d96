"""The workdirs Object Store bucket: the submission user adds packed workdirs, executors only read
them, other services cannot read them (someone's code). Same deployed users and real nats-server as
test_nats_least_privilege.py; each refusal is the server's own permission violation."""

from __future__ import annotations

import pytest

from trainyard_shared.blobs import get_blob, open_store, put_blob

from .test_nats_least_privilege import S, admin, attempt, connected, server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.security, pytest.mark.nats_auth, pytest.mark.service]
BUCKET = S.workdirs_bucket


async def test_submission_adds_executors_read_others_cannot(server, admin):  # noqa: F811
    data = b"a packed workdir, as far as the bucket knows"
    async with connected(server, "submission") as submission:
        digest, stored = await put_blob(await open_store(submission.js, BUCKET), data)
        assert stored
    async with connected(server, "executor-exec-a") as executor:
        store = await open_store(executor.js, BUCKET)
        assert await get_blob(store, digest, max_bytes=1024) == data
        await attempt(executor, store.put("sha256:" + "1" * 64, b"forged"), f"$O.{BUCKET}.C.")
    async with connected(server, "telemetry") as telemetry:
        store = await open_store(telemetry.js, BUCKET)
        await attempt(telemetry, store.get_info(digest), f"$JS.API.STREAM.MSG.GET.OBJ_{BUCKET}")
    async with connected(server, "submission") as submission:
        store = await open_store(submission.js, BUCKET)
        await attempt(
            submission, submission.js.purge_stream(f"OBJ_{BUCKET}"), f"$JS.API.STREAM.PURGE.OBJ_{BUCKET}"
        )


async def test_step_outputs_are_put_by_an_executor_read_by_another_and_by_no_other_service(
    server,  # noqa: F811
    admin,  # noqa: F811
):
    """The step outputs bucket ($TRAINYARD_INPUTS): the executor that ran a step stores its packed
    outputs folder, the executor of a dependent reads it; the submission and telemetry users can
    neither add nor read one (a step's outputs are its run's)."""
    bucket = S.step_outputs_bucket
    data = b"a step's packed outputs folder, as far as the bucket knows"
    async with connected(server, "executor-exec-a") as executor:
        digest, stored = await put_blob(await open_store(executor.js, bucket), data)
        assert stored
    async with connected(server, "executor-exec-b") as other:
        assert await get_blob(await open_store(other.js, bucket), digest, max_bytes=1024) == data
    async with connected(server, "submission") as submission:
        await attempt(submission, submission.js.publish(f"$O.{bucket}.M.forged", b"{}"), f"$O.{bucket}.M.")
        store = await open_store(submission.js, bucket)
        await attempt(submission, store.get_info(digest), f"$JS.API.STREAM.MSG.GET.OBJ_{bucket}")
    async with connected(server, "telemetry") as telemetry:
        store = await open_store(telemetry.js, bucket)
        await attempt(telemetry, store.get_info(digest), f"$JS.API.STREAM.MSG.GET.OBJ_{bucket}")
