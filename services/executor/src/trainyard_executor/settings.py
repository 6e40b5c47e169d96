from __future__ import annotations

import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from trainyard_executor.logbudget import LogLimits
from trainyard_executor.metricsfile import MetricsLimits
from trainyard_executor.metricship import ShipLimits
from trainyard_executor.nvml import GpuReader
from trainyard_executor.sampling import Reader, ResourceSampler
from trainyard_shared.settings import Bytes, HttpSettings, Seconds, WorkdirLimitSettings

DEFAULT_PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    # numerical libraries on some CPUs need these to compute correctly
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    # so a runtime env's pip works behind a TLS-inspecting proxy
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CERT",
    "PIP_TRUSTED_HOST",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


class ExecutorSettings(HttpSettings, WorkdirLimitSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_EXECUTOR_", extra="ignore")

    port: int = 8702
    id: str = Field(
        default_factory=lambda: "local-" + socket.gethostname().split(".")[0].lower()[:40],
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="unique per executor; its command subject and lease key",
    )
    pool: str = "default"
    backend: str = Field("local", pattern="^(local|docker|podman|kubernetes|kubeflow|noop)$")
    docker_host: str | None = Field(
        None, description="the docker backend's engine URL (default: DOCKER_HOST or the local socket)"
    )
    podman_socket: str = Field(
        "unix:///run/podman/podman.sock",
        description="Podman's Docker-compatible API (podman system service) for the podman backend",
    )
    default_image: str | None = Field(
        None, description="container backends: the image of a job spec that names none"
    )
    keep_failed_containers: bool = Field(
        False, description="container backends, for debugging: keep a failed or timed-out container"
    )
    container_init: bool = Field(
        True, description="container backends: an init as PID 1 (docker-init, catatonit) passes signals on"
    )
    container_uid: int = Field(
        10001, ge=1, description="container backends: the uid a job runs as unless its spec says run_as_root"
    )
    container_gid: int = Field(10001, ge=1, description="container backends: the gid a job runs as")
    container_pids_limit: int = Field(
        4096, ge=16, description="container backends: most processes and threads a container may have"
    )
    container_engine_calls: int = Field(
        4,
        ge=1,
        description="container backends: containers being made and started at once on the engine (a drain "
        "of hundreds queues here, not at a loaded engine)",
    )
    container_engine_call_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="container backends: the read timeout of one engine call (a timed-out "
        "create or start is asked again)",
    )
    container_start_deadline_seconds: float = Field(
        300.0,
        gt=0,
        description="container backends: one container's create and start, retries included, "
        "before the attempt fails naming the engine call",
    )
    kube_namespace: str = Field(
        "default",
        description="kubernetes backend: the namespace of its Jobs (give jobs their own, without Secrets)",
    )
    kube_automount_token: bool = Field(
        False,
        description="kubernetes backend: mount a service account token into job pods (off: jobs get no "
        "API credentials)",
    )
    kube_context: str | None = Field(
        None, description="kubernetes backend: kubeconfig context (default: in-cluster or current)"
    )
    kube_outputs_claim: str | None = Field(
        None,
        description="kubernetes backend: PVC for outputs and checkpoints (default: emptyDir, outputs lost)",
    )
    kube_outputs_mount: Path | None = Field(
        None,
        description="kubernetes backend: where this executor mounts kube_outputs_claim (outputs read back)",
    )
    kube_fetch_image: str | None = Field(
        None,
        description="kubernetes backend: the executor's image, run as the init container that fetches a "
        "job's packed workdir and steps' outputs into its pod (unset: such jobs are refused)",
    )
    kube_fetch_nats_url: str | None = Field(
        None, description="kubernetes backend: NATS as job pods reach it (default: nats_url)"
    )
    kube_fetch_nats_user: str = Field(
        "fetcher", min_length=1, description="kubernetes backend: the fetch init container's NATS user"
    )
    kube_fetch_nats_password: SecretStr | None = Field(
        None,
        description="kubernetes backend: that user's password, put in each such attempt's Secret for "
        "the init container alone (unset: such jobs are refused)",
    )
    kube_ttl_seconds: int | None = Field(
        3600, ge=0, description="kubernetes backend: ttlSecondsAfterFinished"
    )
    kube_run_as_user: int = Field(
        1000, ge=0, description="kubernetes backend: pods' non-root uid; 0: the image's user"
    )
    kubeflow_runtime: str = Field(
        "torch-distributed", min_length=1, description="kubeflow backend: the training runtime TrainJobs name"
    )
    kubeflow_runtime_kind: str = Field(
        "ClusterTrainingRuntime",
        pattern="^(ClusterTrainingRuntime|TrainingRuntime)$",
        description="kubeflow backend: a cluster-wide runtime or one of the namespace",
    )
    kubeflow_container: str = Field(
        "node", min_length=1, description="kubeflow backend: the runtime's trainer container (exit code, log)"
    )
    kubeflow_fetch_container: str | None = Field(
        None,
        min_length=1,
        description="kubeflow backend: the init container the training runtime declares to fetch steps' "
        "outputs folders (python -m trainyard_executor.fetch --plan-from-env; unset: steps with inputs "
        "are refused)",
    )
    cpu: float | None = Field(None, gt=0, description="advertised CPUs (default: detected)")
    memory: int | None = Field(None, gt=0, description="advertised MiB (default: detected)")
    gpu: int | None = Field(
        None,
        ge=0,
        description="advertised GPUs (default: those found); local/docker/podman: at most those found, "
        "the lowest indices; kubernetes: the pool's quota",
    )
    nvidia_smi: str = Field(
        "nvidia-smi",
        max_length=4096,
        description="the program that lists this machine's GPUs (path or command line); absent: no GPUs",
    )
    heartbeat_seconds: Seconds = 2.0
    lease_seconds: Seconds = 15.0
    grace_seconds: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL on cancel")
    broker_outage_seconds: Seconds = Field(
        300.0, description="how long an attempt's end is retried while NATS does not answer"
    )
    report_settle_seconds: Seconds = Field(
        60.0,
        description="how long a start waits for the scheduler to apply its report (the record says "
        "running) before its command is tried again later",
    )
    checkpoint_dir: Path | None = Field(
        None, description="TRAINYARD_CHECKPOINT_DIR roots, one dir per job (default: <data>/checkpoints)"
    )
    runtime_env_dir: Path | None = Field(
        None, description="cache of runtime-env venvs, shareable (default: <data>/runtime-envs)"
    )
    max_step_outputs_bytes: Bytes = Field(
        100 * 1024 * 1024,
        description="a pipeline step's outputs folder passed to its dependents ($TRAINYARD_INPUTS): "
        "its files' content at most; over it the step's attempt fails naming the biggest files",
    )
    max_step_outputs_files: int = Field(
        10_000, ge=1, description="files and folders in a step's outputs folder passed to its dependents"
    )
    max_step_inputs_bytes: Bytes = Field(
        1024 * 1024 * 1024,
        description="all the outputs folders one attempt unpacks under $TRAINYARD_INPUTS, together",
    )
    log_flush_seconds: Seconds = 0.2
    log_batch_lines: int = Field(200, ge=1)
    log_max_chunk_bytes: int = Field(
        256 * 1024,
        ge=4096,
        description="largest log chunk (JSON bytes); the server's max_payload less 4 KiB when smaller",
    )
    log_max_bytes_per_attempt: Bytes = Field(
        64 * 1024 * 1024,
        description="an attempt's output stored at most; past it one truncation marker line, the rest "
        "dropped and counted",
    )
    log_max_buffered_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="output held in memory while the logs stream does not take chunks; past it dropped "
        "and counted",
    )

    metrics_enabled: bool = Field(
        True, description="read what jobs report (trainyard.report) and publish it on the metrics stream"
    )
    metrics_flush_seconds: float = Field(
        1.0, ge=0.05, description="how often a job's metrics file is read and its new points published"
    )
    metrics_max_names: int = Field(
        64, ge=1, le=10_000, description="distinct metric names an attempt may report; more are dropped"
    )
    metrics_max_points_per_flush: int = Field(
        2000, ge=1, description="points published per look at an attempt's file; more are thinned out"
    )
    metrics_max_msg_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="largest metrics batch (bytes); at most the stream's TRAINYARD_METRICS_MAX_MSG_BYTES",
    )
    metrics_max_bytes_per_attempt: Bytes = Field(
        64 * 1024 * 1024, description="bytes of an attempt's metrics file read at most"
    )

    local_memory_limit: bool = Field(
        False,
        description="local backend: kill an attempt whose processes together hold more resident memory "
        "than its spec's resources.memory (per rank), checked every local_memory_check_seconds; it fails "
        "'killed: out of memory'",
    )
    local_fork_server: bool = Field(
        True,
        description="local backend: fork each rank's supervisor from one long-lived process instead of "
        "starting an interpreter per rank (~1 ms of CPU against 8-15 ms; docs/performance.md, 'Where a "
        "local job's time goes'); a rank whose request it could not take starts the old way; false: "
        "every rank its own interpreter",
    )
    local_memory_check_seconds: Seconds = Field(
        1.0, description="how often the local memory limit is checked (a spike in between escapes it)"
    )
    sample_seconds: float = Field(
        5.0,
        ge=0.0,
        description="how often a running attempt's CPU and memory are sampled and published with its "
        "metrics (sys.cpu, sys.cpu_seconds, sys.rss_bytes); 0 turns sampling off",
    )

    sample_idle_seconds: float = Field(
        60.0,
        ge=0.0,
        description="a sample that did not move (CPU, memory, GPU) and has no report of the job's to "
        "ride with is published only this long after the last one sent (0: every sample)",
    )

    def sampler(self, reader: Reader | None, gpu: GpuReader | None = None) -> ResourceSampler | None:
        """The attempt's resource sampler, or None (sampling off, or a backend that cannot read);
        ``gpu``: its devices through NVML, where it has some."""
        if reader is None or self.sample_seconds <= 0:
            return None
        return ResourceSampler(
            reader,
            self.sample_seconds,
            gpu=gpu.read if gpu is not None else None,
            idle_seconds=self.sample_idle_seconds,
        )

    def metrics_limits(self) -> MetricsLimits:
        return MetricsLimits(max_names=self.metrics_max_names, max_bytes=self.metrics_max_bytes_per_attempt)

    def metrics_ship_limits(self) -> ShipLimits:
        return ShipLimits(
            flush_seconds=self.metrics_flush_seconds,
            max_points=self.metrics_max_points_per_flush,
            max_msg_bytes=self.metrics_max_msg_bytes,
        )

    def log_limits(self) -> LogLimits:
        return LogLimits(
            max_chunk_bytes=self.log_max_chunk_bytes,
            max_bytes=self.log_max_bytes_per_attempt,
            max_buffered=self.log_max_buffered_bytes,
        )

    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("TRAINYARD_EXECUTOR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="given to every job as MLFLOW_TRACKING_URI",
    )
    python_on_path: bool = Field(
        True, description="put the executor's own Python environment first on a job's PATH"
    )
    python_bin: Path | None = Field(
        None,
        description="with python_on_path, the folder put first on a job's PATH (default: the "
        "executor's own venv, or a venv of the system Python reading the same packages when job "
        "users cannot reach the executor's interpreter: backends/jobpython.py)",
    )
    advertise_host: str = Field(
        "127.0.0.1",
        description="the address the ranks of a split gang on other executors reach this host at when "
        "it runs rank 0 (MASTER_ADDR); on a cluster set this host's routable address",
    )
    rendezvous_port_first: int = Field(29500, ge=1, le=65535, description="split gangs' MASTER_PORT range")
    rendezvous_port_last: int = Field(29999, ge=1, le=65535, description="(inclusive; open it between hosts)")
    gang_check_seconds: Seconds = Field(
        10.0,
        description="a member of a split gang re-reads the job record this often besides watching it, and "
        "stops its ranks this long after the scheduler requeued the attempt if no cancel came",
    )
    run_as: str = Field(
        "auto",
        description="local backend: the user jobs run as. auto: a uid per attempt when the executor is "
        "root and jobs can reach their directories, else the executor's user; per-attempt; UID[:GID] or a "
        "user name (every job); root (unsafe: jobs read what the executor can)",
    )
    job_uid_base: int | None = Field(
        None,
        ge=1000,
        le=2**31 - 65536,
        description="local backend: first of the 65536 uids given to attempts (default: a block between "
        "2^30 and 2^31 chosen by the executor's directory); give executors on one host disjoint blocks",
    )
    passthrough_env: tuple[str, ...] = Field(
        DEFAULT_PASSTHROUGH, description="executor variables a job inherits; nothing else leaks"
    )

    @model_validator(mode="after")
    def _port_range_ordered(self) -> ExecutorSettings:
        if self.rendezvous_port_last < self.rendezvous_port_first:
            raise ValueError(
                f"rendezvous_port_last ({self.rendezvous_port_last}) is below rendezvous_port_first "
                f"({self.rendezvous_port_first})"
            )
        return self
