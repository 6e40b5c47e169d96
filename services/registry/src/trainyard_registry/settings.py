from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import Bytes, HttpSettings, Seconds


class RegistrySettings(HttpSettings):
    # populate_by_name: RegistrySettings(tracking_uri=...) is honoured, not only the environment
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_REGISTRY_", extra="ignore", populate_by_name=True)

    port: int = 8703
    tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("TRAINYARD_REGISTRY_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default: a SQLite store in the data dir",
    )
    registry_uri: str | None = Field(
        None, validation_alias=AliasChoices("TRAINYARD_REGISTRY_REGISTRY_URI", "MLFLOW_REGISTRY_URI")
    )
    experiment: str = "trainyard"
    max_output_file_bytes: int = Field(
        2 * 1024**3, ge=1, description="a larger file of a job's outputs is not uploaded (a tag says so)"
    )
    max_outputs_bytes: int = Field(
        10 * 1024**3, ge=1, description="what a job's outputs may hold in total; files past it are skipped"
    )
    max_output_entries: int = Field(
        10_000, ge=1, description="files and folders of a job's outputs read at most"
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="MLflow webhooks -> the bus: the secret MLflow signs with (X-MLflow-Signature); "
        "set, the registry's HTTP server (host/port above, loopback by default) takes POST "
        "/mlflow/webhook; unset, no receiver",
    )
    webhook_max_bytes: Bytes = Field(64 * 1024, le=1024**2, description="a larger delivery is refused")
    webhook_max_age_seconds: Seconds = Field(
        300.0, description="a delivery whose X-MLflow-Timestamp is further off is refused (replays)"
    )
