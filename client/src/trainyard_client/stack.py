"""The embedded stack: a nats-server and the six services as child processes on this machine.

    from trainyard_client.stack import EmbeddedStack

    with EmbeddedStack(".trainyard", api_port=None, nats_port=None) as stack:  # None: free ports
        client = stack.client()
        ...

Everything lives in the data dir: the JetStream store (``nats/``, so a restart keeps every job), the
API token (``api-token``, written by the submission service on first start), the MLflow store
(``mlflow/mlflow.db``; ``mlflow_server=True``: served by a real ``mlflow server`` for MLflow's
webhooks, mlflowserver.py), the executor's work dirs, and one log file per process (``logs/``).

NATS requires credentials: every service connects as its own user (the users deploy/nats defines,
one per executor id), with passwords generated into ``nats-auth/`` (0700; files 0600). Before the
services start, the provision step declares the streams and buckets as ``admin``; the services
only bind. Code that talks to NATS directly connects with ``stack.nats_connect_options("client")``
(or ``"admin"``, the operator). The monitor port listens on 127.0.0.1 only.

The services come with the ``stack`` extra (``pip install 'trainyard-client[stack]'``); this
module imports them (and ``trainyard_shared``) only when a stack starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

from trainyard_client.mlflowserver import MlflowServer
from trainyard_client.sdk import TOKEN_FILE, TrainyardClient
from trainyard_client.stackprocess import (
    SERVICES,
    ServiceDied,
    ServiceProcess,
    StackError,
    StackNotInstalled,
    check_grace,
    free_port_besides,
    lock_data_dir,
    log_tail,
    missing_packages,
    port_in_use,
    private_log,
    service_processes,
)
from trainyard_client.supervision import Restart, RestartBook, RestartPolicy

if TYPE_CHECKING:
    from trainyard_client.leftovers import Descendants, Leftover

# re-exported: the CLI and the tests name them here
__all__ = [
    "SERVICES",
    "EmbeddedStack",
    "ServiceDied",
    "ServiceProcess",
    "StackError",
    "StackNotInstalled",
    "missing_packages",
]

# what the stack's processes create (logs, the MLflow database, records) is readable by its user only
PRIVATE_UMASK = 0o077
EXECUTOR_HANDBACK_SECONDS = 10.0
"""What the executor needs past its jobs' grace to stop them for good and hand them back (the
SIGKILL after the grace, the last log lines, the record and its event): the stack's stop timeout
must leave it that much, else the executor is killed before its jobs are handed back."""
DEFAULT_EXECUTOR_GRACE_SECONDS = 10.0
SUPERVISE_POLL_SECONDS = 0.25
SCAN_EVERY_SECONDS = 2.0
"""How often a supervised stack notes the processes below its services (see leftovers.py)."""
RestartListener = Callable[[Restart, str], None]
"""Told of each exit the stack answers (a restart, or giving up), with the end of that log."""


class EmbeddedStack:
    """nats-server + submission, scheduler, executor, registry, telemetry, workflow as child processes.

    ``api_port`` is the submission service's HTTP port; the scheduler, executor, registry,
    telemetry and workflow serve ``/metrics`` and ``/healthz`` on ``api_port + 1`` .. ``api_port + 5``.
    ``api_port=None`` (or 0) picks six free ports instead, ``nats_port=None`` a free NATS port.
    ``env`` adds variables for every service (e.g. ``TRAINYARD_LOG_LEVEL``).

    ``stop_timeout``: how long each service may take to stop (they stop side by side); the
    executor's job grace (``TRAINYARD_EXECUTOR_GRACE_SECONDS``, default 10 s) must leave it
    ``EXECUTOR_HANDBACK_SECONDS`` to hand its attempts back. What still runs after that is killed
    (``killed_services``, ``leftovers``).

    ``restart_policy``: restart a process that exits once the stack is up (``restarts`` lists
    them, ``on_restart`` hears of each) and stop only when one keeps exiting (``failure``);
    ``None`` (the default; ``trainyard up`` passes one): no restarts, ``raise_if_failed`` raises
    at the first exit. ``more_executor_ids``: executors started beside the stack's own (each gets a
    NATS user, ``executor-<id>``). ``mlflow_server``: MLflow behind a real ``mlflow server`` with
    its webhooks to the registry (mlflowserver.py; off: the SQLite file, no server).
    """

    def __init__(
        self,
        data_dir: str | Path = ".trainyard",
        *,
        api_port: int | None = 8700,
        nats_port: int | None = 4250,
        nats_monitor_port: int | None = None,
        prefix: str = "trainyard",
        host: str = "127.0.0.1",
        executor_cpu: float | None = None,
        executor_memory: int | None = None,
        executor_gpu: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 90.0,
        stop_timeout: float = 20.0,
        python: str = sys.executable,
        restart_policy: RestartPolicy | None = None,
        on_restart: RestartListener | None = None,
        more_executor_ids: Sequence[str] = (),
        mlflow_server: bool = False,
        cohost: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        self.prefix = prefix
        # the ports asked for first, then free ones that are none of them: a free port is only
        # free until somebody listens, and a random monitor port once fell on a service's port
        chosen = [port for port in (nats_port, nats_monitor_port) if port]
        if api_port:
            chosen += [api_port + offset for offset in range(len(SERVICES))]
        self.nats_port = nats_port or free_port_besides(host, chosen)
        self.nats_monitor_port = nats_monitor_port or free_port_besides(host, chosen)
        if api_port:
            ports = [api_port + offset for offset in range(len(SERVICES))]
        else:
            ports = [free_port_besides(host, chosen) for _ in SERVICES]
        self.ports: dict[str, int] = dict(zip(SERVICES, ports, strict=True))
        mlflow_port = free_port_besides(host, chosen) if mlflow_server else 0
        self.mlflow = MlflowServer(self.data_dir, host, mlflow_port, python) if mlflow_server else None
        self.executor_cpu = executor_cpu
        self.executor_memory = executor_memory
        self.executor_gpu = executor_gpu
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.restart_policy = restart_policy
        self.on_restart = on_restart
        self.restarts: list[Restart] = []
        self.failure: StackError | None = None
        self.killed_services: list[str] = []
        self.leftovers: list[Leftover] = []
        self._descendants: Descendants | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._due: dict[str, float] = {}
        # by process name; ``services`` by service name (co-hosted ones share their process)
        self.processes = service_processes(self.ports, self.log_dir, cohost)
        self.services = {name: proc for proc in self.processes.values() for name in proc.services}
        self.nats: Any = None
        self.nats_auth: Any = None  # trainyard_shared.stackauth.StackCredentials, once started
        # executors started beside the stack's own (tests): each needs a NATS user of its own
        self.more_executor_ids = tuple(more_executor_ids)
        self._lock: IO[str] | None = None

    # where things are

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.ports['submission']}"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.nats_port}"

    @property
    def nats_auth_dir(self) -> Path:
        return self.data_dir / "nats-auth"  # trainyard_shared.stackauth.AUTH_DIR

    def nats_connect_options(self, user: str = "client") -> dict[str, Any]:
        """``nats.connect(stack.nats_url, **stack.nats_connect_options())``: a user, its password
        and the inbox prefix it may read (``client``: submit on the intake and follow job events,
        as another system would; ``admin``: the operator)."""
        return dict(self._credentials().connect_options(user))

    @property
    def nats_monitor_url(self) -> str:
        return f"http://{self.host}:{self.nats_monitor_port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {name: f"http://{self.host}:{port}/metrics" for name, port in self.ports.items()}

    @property
    def health_urls(self) -> dict[str, str]:
        return {name: f"http://{self.host}:{port}/healthz" for name, port in self.ports.items()}

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.service_env()["MLFLOW_TRACKING_URI"]

    def token(self) -> str:
        """The API token: ``TRAINYARD_SUBMISSION_TOKEN`` if given, else the generated token file."""
        configured = self.extra_env.get("TRAINYARD_SUBMISSION_TOKEN") or os.environ.get(
            "TRAINYARD_SUBMISSION_TOKEN"
        )
        if configured:
            return configured
        return self.token_file.read_text().strip()

    def client(self, timeout: float = 30) -> TrainyardClient:
        return TrainyardClient(self.api_url, self.token(), timeout=timeout)

    def service_env(self) -> dict[str, str]:
        """The environment every service process gets."""
        env = {**os.environ, **self.extra_env}
        env.setdefault("TRAINYARD_EXECUTOR_GRACE_SECONDS", str(DEFAULT_EXECUTOR_GRACE_SECONDS))
        env.update(
            {
                "TRAINYARD_NATS_URL": self.nats_url,
                "TRAINYARD_PREFIX": self.prefix,
                "TRAINYARD_DATA_DIR": str(self.data_dir),
                "TRAINYARD_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # a local `source: {repo: .}` (the examples, make demo) is fetched from the folder the stack
        # was started in, and from nowhere else of this machine (trainyard_shared.gitpolicy)
        env.setdefault("TRAINYARD_GIT_LOCAL_ROOTS", os.getcwd())
        if self.mlflow is not None:
            env["MLFLOW_TRACKING_URI"] = self.mlflow.url
        elif not env.get("MLFLOW_TRACKING_URI"):
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"
        for name, port in self.ports.items():
            env[f"TRAINYARD_{name.upper()}_HOST"] = self.host
            env[f"TRAINYARD_{name.upper()}_PORT"] = str(port)
        for key, value in (
            ("CPU", self.executor_cpu),
            ("MEMORY", self.executor_memory),
            ("GPU", self.executor_gpu),
        ):
            if value is not None:
                env[f"TRAINYARD_EXECUTOR_{key}"] = str(value)
        return env

    # lifecycle

    def start(self) -> EmbeddedStack:
        """Start nats-server and the services; return once every /healthz answers 2xx."""
        missing = missing_packages()
        if missing:
            raise StackNotInstalled(missing)
        from trainyard_client.leftovers import Descendants
        from trainyard_shared.natsserver import NatsServer

        self._check_deadlines()
        self._check_ports()
        self._descendants = Descendants()
        self._stopping.clear()
        self._private_dirs()
        self._acquire_lock()
        try:
            self.nats = NatsServer(
                store_dir=self.data_dir / "nats",
                port=self.nats_port,
                monitor_port=self.nats_monitor_port,
                host=self.host,
                log_file=self.log_dir / "nats.log",
                config_file=self._credentials().ensure(self.nats_monitor_port),
            )
            self.nats.start()
            if self.mlflow is not None:  # it takes seconds to start: meanwhile, the rest
                self.mlflow.launch(PRIVATE_UMASK)
            self._provision()
            env = self.service_env()
            for service in self.processes.values():
                self._spawn(service, env)
            if self.mlflow is not None:  # its webhook, with the secret the registry was given
                self.mlflow.connect(self.ready_timeout, f"{self.host}:{self.ports['registry']}")
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        if self.restart_policy is not None:
            # a service that dies during start-up is a configuration error, shown at once; from
            # here on an exit is a crash, answered with a restart
            self._supervisor = threading.Thread(
                target=self._supervise, args=(RestartBook(self.restart_policy),), name="stack-supervisor"
            )
            self._supervisor.start()
        return self

    def _check_deadlines(self) -> None:
        raw = self.service_env()["TRAINYARD_EXECUTOR_GRACE_SECONDS"]
        check_grace(raw, EXECUTOR_HANDBACK_SECONDS, self.stop_timeout)

    def _acquire_lock(self) -> None:
        self._lock = lock_data_dir(self.data_dir)

    def _check_ports(self) -> None:
        wanted = {"nats": self.nats_port, "nats monitor": self.nats_monitor_port, **self.ports}
        busy = [f"{port} ({name})" for name, port in wanted.items() if port_in_use(self.host, port)]
        if busy:
            raise StackError(
                f"port(s) {', '.join(busy)} on {self.host} already in use: is another Trainyard"
                " running? Choose others with --api-port / --nats-port"
            )

    # NATS: who connects as whom, and the provision step

    def executor_id(self) -> str:
        """The executor's id (its NATS user is ``executor-<id>``): TRAINYARD_EXECUTOR_ID or the
        executor's own default."""
        configured = self.service_env().get("TRAINYARD_EXECUTOR_ID")
        if configured:
            return configured
        from trainyard_executor.settings import ExecutorSettings

        field = ExecutorSettings.model_fields["id"]
        default = field.get_default(call_default_factory=True, validated_data={})
        return str(default)

    def _credentials(self) -> Any:
        if self.nats_auth is None:
            from trainyard_shared.stackauth import StackCredentials

            executor_ids = [self.executor_id(), *self.more_executor_ids]
            self.nats_auth = StackCredentials.at(self.data_dir, self.prefix, executor_ids)
        return self.nats_auth

    def _nats_identity(self, service: str, env: Mapping[str, str]) -> dict[str, str]:
        """The NATS user and password of ``service`` (an executor: of the id its ``env`` names)."""
        from trainyard_shared.natsusers import executor_user

        if service != "executor":
            return dict(self._credentials().service_env(service))
        executor_id = env.get("TRAINYARD_EXECUTOR_ID") or self.executor_id()
        return {
            **self._credentials().service_env(executor_user(executor_id)),
            "TRAINYARD_EXECUTOR_ID": executor_id,
        }

    def _provision(self) -> None:
        """Declare the streams and buckets as the operator (``python -m trainyard_shared.provision``,
        with the services' environment, so stream limits set there apply)."""
        env = {**self.service_env(), **self._credentials().service_env("admin")}
        with private_log(self.log_dir / "provision.log") as log:
            done = subprocess.run(
                [self.python, "-m", "trainyard_shared.provision"],
                env=env,
                cwd=self.data_dir,
                umask=PRIVATE_UMASK,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        if done.returncode != 0:
            raise StackError(f"the provision step failed: {self.log_tail('provision')}")

    def _private_dirs(self) -> None:
        """The data dir is passable but not listable (0711: the executor's per-attempt uids reach
        their own work dirs through it); the logs, the MLflow store and NATS's store are the
        stack's alone (0700), and so is everything its processes create (umask 077)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o711)
        for private in (self.log_dir, self.data_dir / "mlflow", self.data_dir / "nats"):
            private.mkdir(parents=True, exist_ok=True)
            private.chmod(0o700)

    def process_env(self, service: str, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as ``service``'s process gets it: its NATS identity added; the admission key
        only for the two services that hold it, even when it is in the environment `trainyard up`
        was started from (the executor, and so a job, must never read it)."""
        env = {k: v for k, v in env.items() if k != "TRAINYARD_ADMISSION_KEY"}
        if service == "registry" and self.mlflow is not None:  # never logged, never another's
            env["TRAINYARD_REGISTRY_WEBHOOK_SECRET"] = self.mlflow.webhook_secret
        return {**env, **self._nats_identity(service, env)}

    def hosted_env(self, service: ServiceProcess, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as ``service``'s process gets it; one that hosts several services gets each one's
        NATS identity as ``TRAINYARD_<SERVICE>_NATS_USER``/``_PASSWORD`` (runner.nats_identity)."""
        if not service.hosts:
            return self.process_env(service.name, env)
        merged = {k: v for k, v in env.items() if k != "TRAINYARD_ADMISSION_KEY"}
        for name in service.hosts:
            own = self.process_env(name, env)
            for key in ("USER", "PASSWORD"):
                merged[f"TRAINYARD_{name.upper()}_NATS_{key}"] = own.pop(f"TRAINYARD_NATS_{key}")
            merged.update(own)  # what else is its own (the registry's webhook secret)
        return merged

    def _spawn(self, service: ServiceProcess, env: dict[str, str]) -> None:
        env = self.hosted_env(service, env)
        log = private_log(service.log_path)  # closed in stop()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"--- trainyard up: starting {service.name} at {stamp} ---\n".encode())
        log.flush()
        service.log_file = log
        service.process = subprocess.Popen(
            service.argv(self.python),
            env=env,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C reaches only `trainyard up`
            umask=PRIVATE_UMASK,
        )

    def healthy(self) -> dict[str, bool]:
        """Each service's /healthz: True when it answers 2xx."""
        result = {}
        with httpx.Client(timeout=2.0) as http:
            for name, url in self.health_urls.items():
                try:
                    result[name] = http.get(url).is_success
                except httpx.HTTPError:
                    result[name] = False
        return result

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.raise_if_dead()
            health = self.healthy()
            if all(health.values()):
                return
            if time.monotonic() >= deadline:
                waiting = ", ".join(name for name, ok in health.items() if not ok)
                raise StackError(f"not healthy after {timeout:.0f}s: {waiting} (logs in {self.log_dir})")
            time.sleep(0.2)

    def dead(self) -> list[ServiceProcess]:
        """Services whose process has exited (nats-server counts as one, named ``nats``)."""
        gone = [s for s in self.processes.values() if s.process is not None and s.process.poll() is not None]
        process = getattr(self.nats, "process", None)
        if process is not None and process.poll() is not None:
            nats = ServiceProcess("nats", self.nats_port, self.log_dir / "nats.log", process)
            gone.append(nats)
        return gone

    def raise_if_dead(self) -> None:
        dead = self.dead()
        if dead:
            raise ServiceDied(dead, {s.name: self.log_tail(s.name) for s in dead})

    def log_tail(self, name: str, lines: int = 25) -> str:
        return log_tail(self.log_dir / f"{name}.log", lines)

    def raise_if_failed(self) -> None:
        """Raise ``ServiceDied`` once the stack cannot go on: with a restart policy, when a process
        kept exiting past its limit (``StackError`` if supervising itself failed); without one, at
        the first exit."""
        if self.restart_policy is None:
            self.raise_if_dead()
        elif self.failure is not None:
            raise self.failure

    # supervision (a thread, once the stack is up)

    def _supervise(self, book: RestartBook) -> None:
        try:
            self._supervise_until_stopped(book)
        except Exception as exc:  # a supervisor that died silently would leave crashes unanswered
            self.failure = StackError(f"supervising the stack failed: {exc!r}")

    def _supervise_until_stopped(self, book: RestartBook) -> None:
        scanned = 0.0
        while not self._stopping.wait(SUPERVISE_POLL_SECONDS):
            now = time.monotonic()
            if now - scanned >= SCAN_EVERY_SECONDS and self._descendants is not None:
                self._descendants.scan(self._service_pids())
                scanned = now
            if not self._answer_exits(book, now):
                return
            for name, due in sorted(self._due.items(), key=lambda item: item[1]):
                if now >= due and not self._stopping.is_set():
                    del self._due[name]
                    self._restart(name)

    def _answer_exits(self, book: RestartBook, now: float) -> bool:
        """Schedule a restart of each newly exited process; False once one is given up on."""
        for gone in self.dead():
            if gone.name in self._due:
                continue
            code = gone.process.returncode if gone.process is not None else None
            restart = book.exited(gone.name, code, now)
            self.restarts.append(restart)
            tail = self.log_tail(gone.name)
            if restart.given_up:
                self.failure = ServiceDied([gone], {gone.name: tail})
            else:
                self._due[gone.name] = now + restart.delay_seconds
            if self.on_restart is not None:
                self.on_restart(restart, tail)
            if restart.given_up:
                return False
        return True

    def _restart(self, name: str) -> None:
        if name == "nats":
            try:
                self.nats.start()
            except RuntimeError:
                pass  # it exited again at once: the next pass counts that exit
            return
        service = self.processes[name]
        if service.log_file is not None:
            service.log_file.close()
            service.log_file = None
        self._spawn(service, self.service_env())

    def _service_pids(self) -> list[int]:
        return [s.process.pid for s in self.processes.values() if s.process is not None and s.alive]

    # stopping

    def stop(self) -> None:
        """Stop the services side by side, wait for them (the executor hands its attempts back
        first) up to ``stop_timeout``, kill what is left, then stop nats.

        ``killed_services`` names the services that had to be killed, ``leftovers`` the processes
        they had started that were still running after them (killed too, with their groups)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        self._due.clear()
        running = [s for s in self.processes.values() if s.alive]
        self._scan()
        for process in (service.process for service in running):
            with contextlib.suppress(ProcessLookupError):
                if process is not None:
                    process.send_signal(signal.SIGTERM)
        self.killed_services = self._wait_or_kill(running, time.monotonic() + self.stop_timeout)
        for service in self.processes.values():
            if service.log_file is not None:
                service.log_file.close()
                service.log_file = None
        self.leftovers = self._descendants.kill_living() if self._descendants is not None else []
        if self.mlflow is not None:
            self.mlflow.stop(self.stop_timeout)
        if self.nats is not None:
            self.nats.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _scan(self) -> None:
        if self._descendants is not None:
            self._descendants.scan(self._service_pids())

    def _wait_or_kill(self, running: list[ServiceProcess], deadline: float) -> list[str]:
        """Wait for ``running`` to exit, noting what they started meanwhile; kill the ones still
        there at ``deadline``. Returns their names."""
        waiting = list(running)
        while waiting and time.monotonic() < deadline:
            self._scan()  # before a service is gone, its orphans are no longer below it
            first = waiting[0].process
            with contextlib.suppress(subprocess.TimeoutExpired):
                if first is not None:
                    first.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            waiting = [s for s in waiting if s.alive]
        self._scan()
        for service in waiting:
            assert service.process is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()
        return [s.name for s in waiting]

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
