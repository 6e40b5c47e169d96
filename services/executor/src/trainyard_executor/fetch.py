"""The init container of a Kubernetes job pod: a packed workdir and steps' outputs folders, fetched
by digest from the Object Store and unpacked as hostile input into the pod's volumes.

    python -m trainyard_executor.fetch --nats-url URL --prefix P \\
        [--workdir sha256:... --work-dir /trainyard/work] \\
        [--input <step>=sha256:... ... --inputs-dir /trainyard/inputs] [--limits ...]

Everything it is told is in its argv (built by the executor: backends/kube_fetch.py), except the
NATS user's password: ``TRAINYARD_FETCH_NATS_PASSWORD``, which the pod takes from the attempt's
Secret for this container alone (``TRAINYARD_FETCH_NATS_USER`` names the user, ``fetcher``: it
may only read the workdirs and step outputs buckets). The bytes are checked against their digest
(trainyard_shared.blobs.get_blob), then unpacked as the executor does on its own host
(backends/workdir.unpack_source: ``<work dir>/src``; stepfolders.unpack_inputs: ``<inputs
dir>/<step>/``), no link followed, every cap applied to what is actually read.

Exit 0: all in place. Exit 1: the reason on stderr and in the container's termination message
(``/dev/termination-log``, which the kubelet puts in the pod's status), so the attempt fails
naming it. Exit 2: a malformed argv. The password is never printed.

    python -m trainyard_executor.fetch --plan-from-env

The same, its arguments read from ``TRAINYARD_FETCH_PLAN`` (a JSON list of strings) instead: for a
Kubeflow training runtime that declares this init container with that fixed argv, since a
TrainJob's runtime patch may set a container's env and mounts but not its command
(backends/kube_fetch.trainjob_fetch_patch). Unset or empty: nothing to fetch, exit 0 (the runtime
runs it in every TrainJob's pods, with inputs or not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import nats
from nats.js import JetStreamContext

from trainyard_contracts import Subjects
from trainyard_contracts.spec import strip_url_credentials
from trainyard_executor.backends.workdir import WorkdirError, unpack_source
from trainyard_executor.stepfolders import StepFoldersError, archive_cap, unpack_inputs
from trainyard_shared.blobs import (
    BlobMissing,
    BlobTooLarge,
    PackLimits,
    UnpackLimits,
    check_digest,
    get_blob,
    open_store,
)
from trainyard_shared.natsusers import FETCHER_USER, inbox_prefix

USER_VARIABLE = "TRAINYARD_FETCH_NATS_USER"
PASSWORD_VARIABLE = "TRAINYARD_FETCH_NATS_PASSWORD"
PLAN_VARIABLE = "TRAINYARD_FETCH_PLAN"
PLAN_FROM_ENV = "--plan-from-env"
TERMINATION_LOG = "/dev/termination-log"
MODULE = "trainyard_executor.fetch"
MESSAGE_MAX = 3500  # the kubelet keeps 4096 bytes of a termination message


class FetchError(RuntimeError):
    """What could not be put in place, and why (the attempt fails with it)."""


@dataclass(frozen=True)
class FetchLimits:
    """The executor's caps, passed on: a packed workdir (``max_workdir_*``) and each step's outputs
    folder (``max_step_outputs_*``), the inputs together (``max_step_inputs_bytes``)."""

    workdir_bytes: int = 100 * 1024**2
    workdir_files: int = 10_000
    outputs_bytes: int = 100 * 1024**2
    outputs_files: int = 10_000
    inputs_bytes: int = 1024**3

    def as_arg(self) -> str:
        return ",".join(
            str(v)
            for v in (
                self.workdir_bytes,
                self.workdir_files,
                self.outputs_bytes,
                self.outputs_files,
                self.inputs_bytes,
            )
        )

    @classmethod
    def parse(cls, text: str) -> FetchLimits:
        try:
            values = [int(v) for v in text.split(",")]
            limits = cls(*values)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"--limits wants five integers, got {text!r}") from None
        if len(values) != 5 or min(values) < 1:
            raise argparse.ArgumentTypeError(f"--limits wants five positive integers, got {text!r}")
        return limits


@dataclass(frozen=True)
class FetchPlan:
    """What one pod's init container fetches, and where it unpacks it."""

    nats_url: str
    prefix: str
    workdir: str | None = None
    """The packed workdir's digest; unpacked into ``<work_dir>/src``."""
    work_dir: str = "/trainyard/work"
    inputs: tuple[tuple[str, str], ...] = ()
    """``(step path, digest)``: unpacked into ``<inputs_dir>/<step path>/``."""
    inputs_dir: str = "/trainyard/inputs"
    limits: FetchLimits = field(default_factory=FetchLimits)
    timeout_s: float = 600.0
    termination_log: str = TERMINATION_LOG

    def argv(self, python: str = "python") -> list[str]:
        """The init container's command."""
        return [python, "-m", MODULE, *self.arguments()]

    def arguments(self) -> list[str]:
        """What follows the program (the argv, or ``TRAINYARD_FETCH_PLAN`` as a JSON list)."""
        args = ["--nats-url", self.nats_url, "--prefix", self.prefix]
        if self.workdir is not None:
            args += ["--workdir", self.workdir, "--work-dir", self.work_dir]
        for path, digest in self.inputs:
            args += ["--input", f"{path}={digest}"]
        if self.inputs:
            args += ["--inputs-dir", self.inputs_dir]
        return [*args, "--limits", self.limits.as_arg(), "--timeout", f"{self.timeout_s:g}"]


def _input(text: str) -> tuple[str, str]:
    path, sep, digest = text.rpartition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--input wants <step>=sha256:<hex>, got {text[:200]!r}")
    try:
        return path, check_digest(digest)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _digest(text: str) -> str:
    try:
        return check_digest(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse(argv: Sequence[str]) -> FetchPlan:
    """The plan in ``argv`` (without the program); SystemExit 2 with argparse's message if malformed."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--workdir", type=_digest)
    parser.add_argument("--work-dir", default="/trainyard/work")
    parser.add_argument("--input", type=_input, action="append", default=[])
    parser.add_argument("--inputs-dir", default="/trainyard/inputs")
    parser.add_argument("--limits", type=FetchLimits.parse, default=FetchLimits())
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--termination-log", default=TERMINATION_LOG, help="where the reason of a failure goes"
    )
    args = parser.parse_args(list(argv))
    if args.workdir is None and not args.input:
        parser.error("nothing to fetch: give --workdir or --input")
    return FetchPlan(
        nats_url=args.nats_url,
        prefix=args.prefix,
        workdir=args.workdir,
        work_dir=args.work_dir,
        inputs=tuple(args.input),
        inputs_dir=args.inputs_dir,
        limits=args.limits,
        timeout_s=args.timeout,
        termination_log=args.termination_log,
    )


async def _get(js: JetStreamContext, bucket: str, digest: str, max_bytes: int, what: str) -> bytes:
    try:
        return await get_blob(await open_store(js, bucket), digest, max_bytes)
    except (BlobMissing, BlobTooLarge, ValueError) as exc:
        raise FetchError(f"{what}: {exc}") from exc
    except Exception as exc:  # NATS refusing (permissions) or away
        raise FetchError(f"{what}: could not be read from {bucket}: {type(exc).__name__}: {exc}") from exc


async def fetch(plan: FetchPlan, user: str, password: str) -> None:
    """Fetch and unpack what ``plan`` names (FetchError says what failed and why)."""
    subjects = Subjects(plan.prefix)
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:  # the server's permission violations, said at the end
        if "permission" in str(exc).lower() and len(refusals) < 5:
            refusals.append(str(exc).strip())

    try:
        nc = await nats.connect(
            servers=[u.strip() for u in plan.nats_url.split(",")],
            user=user,
            password=password,
            inbox_prefix=inbox_prefix(user),
            connect_timeout=10,
            max_reconnect_attempts=3,
            error_cb=on_error,
            name="trainyard-fetch",
        )
    except Exception as exc:
        where = strip_url_credentials(plan.nats_url)
        why = f"{type(exc).__name__}: {exc}"
        raise FetchError(f"could not connect to NATS at {where} as {user}: {why}") from exc
    try:
        await _fetch_all(plan, nc.jetstream(timeout=min(30.0, plan.timeout_s / 2)), subjects)
    except FetchError as exc:
        if refusals:
            raise FetchError(f"{exc} (NATS refused the user {user}: {'; '.join(refusals)})") from exc
        raise
    finally:
        await nc.close()


async def _fetch_all(plan: FetchPlan, js: JetStreamContext, subjects: Subjects) -> None:
    limits = plan.limits
    if plan.workdir is not None:
        what = f"the packed workdir {plan.workdir}"
        data = await _get(js, subjects.workdirs_bucket, plan.workdir, limits.workdir_bytes, what)
        source = UnpackLimits(limits.workdir_bytes, limits.workdir_files, limits.workdir_bytes)
        try:
            await asyncio.to_thread(unpack_source, data, Path(plan.work_dir), source)
        except WorkdirError as exc:
            raise FetchError(str(exc)) from exc
    if plan.inputs:
        pack = PackLimits(max_bytes=limits.outputs_bytes, max_files=limits.outputs_files)
        bucket, cap = subjects.step_outputs_bucket, archive_cap(pack)
        loaded = []
        for path, digest in plan.inputs:
            what = f"the outputs of step {path} ({digest})"
            loaded.append((path, await _get(js, bucket, digest, cap, what)))
        try:
            await asyncio.to_thread(unpack_inputs, Path(plan.inputs_dir), loaded, pack, limits.inputs_bytes)
        except StepFoldersError as exc:
            raise FetchError(str(exc)) from exc


def _say(message: str, termination_log: str) -> None:
    print(f"trainyard fetch: {message}", file=sys.stderr, flush=True)
    try:
        with open(termination_log, "w") as f:
            f.write(message[:MESSAGE_MAX])
    except OSError:
        pass  # not in a pod (or no termination log): stderr said it


def plan_from_env(environ: Mapping[str, str]) -> list[str] | None:
    """The arguments ``TRAINYARD_FETCH_PLAN`` holds (None: unset or empty, nothing to fetch);
    SystemExit 2 naming the variable when it is not a JSON list of strings."""
    text = environ.get(PLAN_VARIABLE, "").strip()
    if not text:
        return None
    try:
        args = json.loads(text)
    except ValueError as exc:
        _exit_malformed(f"{PLAN_VARIABLE} is not JSON: {exc}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        _exit_malformed(f"{PLAN_VARIABLE} must be a JSON list of strings, got {text[:200]!r}")
    return args


def _exit_malformed(message: str) -> NoReturn:
    print(f"python -m {MODULE}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == [PLAN_FROM_ENV]:
        found = plan_from_env(os.environ)
        if found is None:
            print(f"trainyard fetch: nothing to fetch ({PLAN_VARIABLE} is not set)", file=sys.stderr)
            return 0
        args = found
    plan = parse(args)
    termination_log = plan.termination_log
    user = os.environ.get(USER_VARIABLE) or FETCHER_USER
    password = os.environ.get(PASSWORD_VARIABLE)
    if not password:
        _say(f"no NATS password: {PASSWORD_VARIABLE} is not set (the attempt's Secret)", termination_log)
        return 1
    try:
        asyncio.run(asyncio.wait_for(fetch(plan, user, password), plan.timeout_s))
    except FetchError as exc:
        _say(str(exc), termination_log)
        return 1
    except TimeoutError:
        _say(f"fetching took more than {plan.timeout_s:g}s", termination_log)
        return 1
    except OSError as exc:  # the volume: full, unwritable
        _say(f"could not unpack: {exc}", termination_log)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
