"""MLflow run-context provider: runs started inside a Trainyard job carry the job's identity.

MLflow loads this module through the ``mlflow.run_context_provider`` entry point declared in the
client package (``trainyard = trainyard_client.mlflow_context:TrainyardRunContextProvider``), so
only processes that already import mlflow ever import it. Every ``mlflow.start_run()`` made while
``TRAINYARD_JOB_ID`` is set (the executor sets it, with the other variables below) gets the tags
without the job's code knowing about Trainyard; the registry finds the run by
``trainyard.job_id``. Plugin tags are resolved after MLflow's own providers, so the commit the job
was submitted at wins over whatever the git provider guessed from the working directory.
"""

from __future__ import annotations

import os

from mlflow.tracking.context.abstract_context import RunContextProvider

JOB_ID_TAG = "trainyard.job_id"
ATTEMPT_TAG = "trainyard.attempt"
QUEUE_TAG = "trainyard.queue"
JOB_NAME_TAG = "trainyard.job_name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_REPO_TAG = "mlflow.source.git.repoURL"

# tag -> environment variable set by the executor
_TAGS_FROM_ENV: dict[str, str] = {
    JOB_ID_TAG: "TRAINYARD_JOB_ID",
    ATTEMPT_TAG: "TRAINYARD_ATTEMPT",
    QUEUE_TAG: "TRAINYARD_QUEUE",
    JOB_NAME_TAG: "TRAINYARD_JOB_NAME",
    GIT_COMMIT_TAG: "TRAINYARD_GIT_COMMIT",
    GIT_REPO_TAG: "TRAINYARD_GIT_REPO",
}


class TrainyardRunContextProvider(RunContextProvider):
    """Tags MLflow runs with the Trainyard job they belong to (active when TRAINYARD_JOB_ID is set)."""

    def in_context(self) -> bool:
        return bool(os.environ.get("TRAINYARD_JOB_ID"))

    def tags(self) -> dict[str, str]:
        return {tag: value for tag, var in _TAGS_FROM_ENV.items() if (value := os.environ.get(var))}
