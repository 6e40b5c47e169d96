from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import Bytes, HttpSettings
from trainyard_telemetry.joblogs import JobOutputLimits
from trainyard_telemetry.live import LiveLimits


class TelemetrySettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_TELEMETRY_", extra="ignore")

    port: int = 8704
    metrics_max_jobs: int = Field(
        1000, ge=1, description="running jobs whose reported metrics are exposed at most (label job_id)"
    )
    metrics_max_names: int = Field(
        32, ge=1, description="metric names exposed per job at most (label name): its first ones"
    )
    metrics_allow: str | None = Field(
        None, description="a regular expression a metric name must match in full to be exposed"
    )

    job_output_to_logstash: bool = Field(
        False,
        description="ship job output lines (the logs stream) to Logstash at LOGSTASH_HOST:LOGSTASH_PORT "
        "over TCP, with ECS fields (docs/insight.md)",
    )
    logstash_host: str | None = Field(None, description="where job output goes (default: LOGSTASH_HOST)")
    logstash_port: int | None = Field(None, description="its TCP port (default: LOGSTASH_PORT)")
    job_output_queue_lines: int = Field(
        10_000, ge=1, description="job output lines waiting for Logstash at most; past it they are dropped"
    )
    job_output_queue_bytes: Bytes = Field(
        16 * 1024 * 1024, description="bytes of job output waiting for Logstash at most"
    )

    def logstash_address(self) -> tuple[str, int]:
        """Logstash's (host, port) for job output: these settings, else the services' own
        LOGSTASH_HOST / LOGSTASH_PORT; a clear error when shipping is on and neither names one."""
        host = self.logstash_host or os.environ.get("LOGSTASH_HOST")
        port = self.logstash_port or os.environ.get("LOGSTASH_PORT")
        if not host or not port:
            raise ValueError(
                "TRAINYARD_TELEMETRY_JOB_OUTPUT_TO_LOGSTASH is on but no Logstash is named: set "
                "LOGSTASH_HOST and LOGSTASH_PORT (or TRAINYARD_TELEMETRY_LOGSTASH_HOST/_PORT)"
            )
        return host, int(port)

    def job_output_limits(self) -> JobOutputLimits:
        return JobOutputLimits(max_lines=self.job_output_queue_lines, max_bytes=self.job_output_queue_bytes)

    def live_limits(self) -> LiveLimits:
        return LiveLimits(
            max_jobs=self.metrics_max_jobs, max_names=self.metrics_max_names, allow=self.metrics_allow
        )
