from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings


class RegistrySettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_REGISTRY_", extra="ignore")

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
