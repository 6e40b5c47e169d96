"""Triggers: a job (its log followed over SSE, polling as the fallback), a pipeline run (polled),
and new versions of a registered model (an event trigger for an ``AssetWatcher``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from trainyard_airflow.api import (
    JOB_TERMINAL,
    RUN_TERMINAL,
    AsyncTrainyardApi,
    TrainyardApiError,
    job_outcome,
    log_line,
    pipeline_outcome,
)
from trainyard_airflow.hooks import DEFAULT_CONN_ID, TrainyardHook

_MODULE = __name__


class TrainyardJobTrigger(BaseTrigger):
    """Fires once the job has ended, with :func:`~trainyard_airflow.api.job_outcome` as payload.

    It follows the job's log (``GET /v1/jobs/<id>/logs?follow=true``, server-sent events that end
    with the job's final state), echoing each line into the task's log (``echo_logs``); when that
    stream cannot be had or breaks, it polls the job every ``poll_interval`` seconds instead.
    ``cancel_on_kill``: a user's "mark failed" (or clear) of the deferred task cancels the job
    (Airflow 3.3's ``BaseTrigger.on_kill``; the sensor sets it False for a job it did not start).
    """

    def __init__(
        self,
        job_id: str,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 5.0,
        echo_logs: bool = True,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.trainyard_conn_id = trainyard_conn_id
        self.poll_interval = poll_interval
        self.echo_logs = echo_logs
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{_MODULE}.TrainyardJobTrigger",
            {
                "job_id": self.job_id,
                "trainyard_conn_id": self.trainyard_conn_id,
                "poll_interval": self.poll_interval,
                "echo_logs": self.echo_logs,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    async def _api(self) -> AsyncTrainyardApi:
        return await TrainyardHook(self.trainyard_conn_id).aget_conn()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async with await self._api() as api:
            try:
                record = await api.get_job(self.job_id)
                if record["state"] not in JOB_TERMINAL:
                    if self.echo_logs:
                        await self._follow(api)
                    record = await self._poll_until_ended(api)
            except TrainyardApiError as exc:  # gone (purged), or the token no longer reads it
                yield TriggerEvent(
                    {"kind": "job", "job_id": self.job_id, "state": "error", "reason": str(exc)}
                )
                return
            yield TriggerEvent(job_outcome(record))

    async def _follow(self, api: AsyncTrainyardApi) -> None:
        """Echo the job's log until the API says it ended; a broken stream is no error: the
        state is polled after it either way."""
        try:
            async for event, data in api.follow_logs(self.job_id):
                if event == "log":
                    self.log.info("%s", log_line(data))
                elif event == "end":
                    self.log.info("trainyard job %s ended: %s", self.job_id, data)
                    return
        except (httpx.HTTPError, TrainyardApiError) as exc:
            self.log.warning("following job %s's log stopped (%s); polling its state", self.job_id, exc)

    async def _poll_until_ended(self, api: AsyncTrainyardApi) -> dict[str, Any]:
        while True:
            try:
                record = await api.get_job(self.job_id)
                if record["state"] in JOB_TERMINAL:
                    return record
            except httpx.TransportError as exc:  # the API restarting: try again next round
                self.log.warning("asking for job %s failed (%s); trying again", self.job_id, exc)
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        if not self.cancel_on_kill:
            return
        async with await self._api() as api:
            cancelled = await api.cancel_job(self.job_id)
        self.log.info(
            "task killed: trainyard job %s %s", self.job_id, "cancelled" if cancelled else "had ended"
        )


class TrainyardPipelineTrigger(BaseTrigger):
    """Fires once the pipeline run has ended (polled: the API has no stream of a run's events)."""

    def __init__(
        self,
        run_id: str,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 5.0,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.trainyard_conn_id = trainyard_conn_id
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{_MODULE}.TrainyardPipelineTrigger",
            {
                "run_id": self.run_id,
                "trainyard_conn_id": self.trainyard_conn_id,
                "poll_interval": self.poll_interval,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        seen: dict[str, Any] = {}
        async with await TrainyardHook(self.trainyard_conn_id).aget_conn() as api:
            while True:
                try:
                    run = await api.get_pipeline(self.run_id)
                except TrainyardApiError as exc:
                    yield TriggerEvent({"kind": "pipeline", "run_id": self.run_id, "state": "error",
                                        "reason": str(exc)})  # fmt: skip
                    return
                except httpx.TransportError as exc:
                    self.log.warning("asking for run %s failed (%s); trying again", self.run_id, exc)
                else:
                    outcome = pipeline_outcome(run)
                    if outcome["steps"] != seen:
                        self.log.info("pipeline run %s steps: %s", self.run_id, outcome["steps"])
                        seen = outcome["steps"]
                    if outcome["state"] in RUN_TERMINAL:
                        yield TriggerEvent(outcome)
                        return
                await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        if self.cancel_on_kill:
            async with await TrainyardHook(self.trainyard_conn_id).aget_conn() as api:
                await api.cancel_pipeline(self.run_id)


class TrainyardModelRegisteredTrigger(BaseEventTrigger):
    """One event per new version of model ``model_name`` (``model.<name>.registered`` as the API
    lists it), for ``AssetWatcher(name=..., trigger=TrainyardModelRegisteredTrigger("digits"))``:
    a DAG scheduled on that asset runs on every new version. Versions above ``after_version``
    count; None: those registered after the trigger first asked (what existed then is history)."""

    def __init__(
        self,
        model_name: str,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 10.0,
        after_version: int | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.trainyard_conn_id = trainyard_conn_id
        self.poll_interval = poll_interval
        self.after_version = after_version

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{_MODULE}.TrainyardModelRegisteredTrigger",
            {
                "model_name": self.model_name,
                "trainyard_conn_id": self.trainyard_conn_id,
                "poll_interval": self.poll_interval,
                "after_version": self.after_version,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last = self.after_version
        async with await TrainyardHook(self.trainyard_conn_id).aget_conn() as api:
            while True:
                try:
                    versions = await api.models(self.model_name)
                except (httpx.TransportError, TrainyardApiError) as exc:
                    self.log.warning("listing model %s failed (%s); trying again", self.model_name, exc)
                else:
                    known = [v for v in versions if v.get("name") == self.model_name]
                    if last is None:
                        last = max((int(v["version"]) for v in known), default=0)
                        self.log.info("model %s: versions above %d fire", self.model_name, last)
                    for version in sorted(known, key=lambda v: int(v["version"])):
                        if int(version["version"]) > last:
                            last = int(version["version"])
                            yield TriggerEvent(model_event(version))
                await asyncio.sleep(self.poll_interval)


def model_event(version: dict[str, Any]) -> dict[str, Any]:
    """The asset event's extra: which version, from which job and commit."""
    keep = ("name", "version", "job_id", "attempt", "run_id", "git_commit", "metrics", "created_at", "source")
    return {"kind": "model", **{k: version[k] for k in keep if k in version}}
