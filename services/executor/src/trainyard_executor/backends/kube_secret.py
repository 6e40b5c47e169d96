"""The attempt's Secret: what a Kubernetes Job must never carry in its own object.

One Secret per attempt, ``<job>-secrets``, created before the Job (its pod needs it at once), then
owned by the Job (the garbage collector removes it with the Job) and deleted with the attempt. It
holds the source credential as the git config key the init container reads (``git-config-key``,
see kube_source), the NATS password of the init container that fetches a packed workdir or
steps' outputs (``nats-fetch-password``, see kube_fetch), and each secret env value of the spec
(``env.<NAME>``), which the job container gets through a ``secretKeyRef``. Whoever may read Jobs
in the namespace then reads no secret; the executor itself may create, patch and delete Secrets
there but never read one back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GIT_CONFIG_KEY = "git-config-key"
FETCH_PASSWORD_KEY = "nats-fetch-password"


def secret_name(job_name: str) -> str:
    return f"{job_name}-secrets"


def env_key(name: str) -> str:
    """The Secret's key for env variable ``name`` (env names are valid Secret keys as they are)."""
    return f"env.{name}"


def secret_ref(job_name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": secret_name(job_name), "key": key}}


def env_entries(job_name: str, env: Mapping[str, str], secret_names: frozenset[str]) -> list[dict[str, Any]]:
    """A container's env: a plain value for each variable, a reference for each secret one."""
    return [
        {"name": k, "valueFrom": secret_ref(job_name, env_key(k))}
        if k in secret_names
        else {"name": k, "value": v}
        for k, v in env.items()
    ]


def attempt_secret(
    metadata: Mapping[str, Any],
    *,
    git_config_key: str | None,
    secret_env: Mapping[str, str],
    fetch_password: str | None = None,
) -> dict[str, Any] | None:
    """The attempt's Secret, or None when it has nothing to hold. ``metadata``: the Job's
    (renamed here); ``git_config_key``: ``url.<url with credential>.insteadOf`` or None;
    ``secret_env``: the secret env variables the job container gets, by name;
    ``fetch_password``: the NATS user ``fetcher``'s, for the pod's fetch init container alone
    (kube_fetch), or None."""
    data = {env_key(k): v for k, v in secret_env.items()}
    if git_config_key is not None:
        data[GIT_CONFIG_KEY] = git_config_key
    if fetch_password is not None:
        data[FETCH_PASSWORD_KEY] = fetch_password
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {**metadata, "name": secret_name(str(metadata["name"]))},
        "immutable": True,
        "stringData": data,
    }
