from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings


class SubmissionSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_SUBMISSION_", extra="ignore")

    port: int = 8700
    token: SecretStr | None = Field(
        None, description="API bearer token; default: generated once into <data_dir>/api-token"
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    git_timeout_seconds: float = Field(20.0, gt=0)
    max_workdir_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="a packed workdir: the upload and its unpacked content"
    )
    max_workdir_files: int = Field(10_000, ge=1, description="files and folders in a packed workdir")
    scheduler_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="how long `why` and dry runs wait for the scheduler leader"
    )
