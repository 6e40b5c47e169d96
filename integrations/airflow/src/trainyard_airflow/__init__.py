"""Apache Airflow provider for Trainyard: run Trainyard jobs and pipelines from DAGs (docs/airflow.md)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """What Airflow's providers manager reads (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-trainyard",
        "name": "Trainyard",
        "description": "Run Trainyard training jobs and pipelines from Airflow: deferrable operators, "
        "a sensor, triggers that follow a job's events, and model-registered asset events.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Trainyard",
                "external-doc-url": "https://github.com/trainyard/trainyard/blob/main/docs/airflow.md",
                "tags": ["software"],
            }
        ],
        "operators": [{"integration-name": "Trainyard", "python-modules": ["trainyard_airflow.operators"]}],
        "sensors": [{"integration-name": "Trainyard", "python-modules": ["trainyard_airflow.sensors"]}],
        "hooks": [{"integration-name": "Trainyard", "python-modules": ["trainyard_airflow.hooks"]}],
        "triggers": [{"integration-name": "Trainyard", "python-modules": ["trainyard_airflow.triggers"]}],
        "connection-types": [
            {
                "hook-class-name": "trainyard_airflow.hooks.TrainyardHook",
                "hook-name": "Trainyard",
                "connection-type": "trainyard",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port", "extra"],
                    "relabeling": {"host": "API URL", "password": "API token"},
                    "placeholders": {"host": "http://127.0.0.1:8700", "password": "a team or admin token"},
                },
            }
        ],
        "extra-links": [
            "trainyard_airflow.links.TrainyardJobLink",
            "trainyard_airflow.links.TrainyardPipelineLink",
        ],
    }
