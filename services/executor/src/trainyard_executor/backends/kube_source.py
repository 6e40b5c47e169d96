"""How a Kubernetes job pod fetches its git source: the installation's git rule, and the source
credential in a per-job Secret, never in a container's arguments.

The init container runs ``git <rule's -c options> clone -- <url without credential> <dir>``.
When the spec carries a credential, the attempt's Secret (``<job>-secrets``, kube_secret) holds
``url.<url with credential>.insteadOf``; the container gets it as ``GIT_CONFIG_KEY_0``
through a ``secretKeyRef`` (git reads configuration from ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``),
so git fetches with the credential while the Job object, the pod spec and ``ps`` show none, and the
clone's ``origin`` is the URL without it. No shell runs: every container command is an argv.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainyard_contracts.spec import strip_url_credentials
from trainyard_executor.backends.kube_secret import GIT_CONFIG_KEY, secret_ref
from trainyard_shared.gitpolicy import GitPolicy, RepoRefused, check_repo

# git without any gitconfig of the image, no prompt (there is no terminal); HOME for git's own files
GIT_ENV = {
    "HOME": "/tmp",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}
# the rule's options without a pinned address: the pod resolves names in the cluster's DNS, which
# may answer otherwise than the executor's (the cluster's network policy decides what it reaches)
_UNPINNED = "http.curloptResolve="
_DEFAULT_RULE = ("-c", "protocol.allow=never", "-c", "protocol.ext.allow=never")


@dataclass(frozen=True)
class GitFetch:
    """What the init container fetches: ``url`` (no credential) with ``config`` (``-c`` options);
    ``credential_url``: the URL with the credential, or None when there is none."""

    url: str
    config: tuple[str, ...]
    credential_url: str | None = None


def kube_git_fetch(repo: str, policy: GitPolicy) -> GitFetch:
    """Check ``repo`` (the URL with its credential put back) against the installation's rule.
    Raises RepoRefused; a local path is refused (the pod cannot see the executor's files)."""
    checked = check_repo(repo, policy)
    if checked.local:
        raise RepoRefused("a local path cannot be cloned in a Kubernetes pod (give an https or ssh URL)")
    pairs = zip(checked.config[::2], checked.config[1::2], strict=True)
    config = tuple(a for flag, value in pairs if not value.startswith(_UNPINNED) for a in (flag, value))
    return unchecked_fetch(repo, config)


def unchecked_fetch(repo: str, config: tuple[str, ...] = ()) -> GitFetch:
    """The fetch of ``repo`` with ``config`` (default: no protocol but the ones git must refuse
    anyway stays on), the credential split out."""
    clean = strip_url_credentials(repo)
    base = config or (*_DEFAULT_RULE, "-c", "protocol.https.allow=always", "-c", "protocol.ssh.allow=always")
    return GitFetch(clean, tuple(base), repo if clean != repo else None)


def git_config_key(fetch: GitFetch | None) -> str | None:
    """The git config key that carries the credential (the attempt's Secret holds it), or None."""
    if fetch is None or fetch.credential_url is None:
        return None
    return f"url.{fetch.credential_url}.insteadOf"


def git_init_container(
    fetch: GitFetch, image: str, security: Mapping[str, Any], job_name: str, work_mount: str
) -> dict[str, Any]:
    """Clones the job's source into the work volume before the job starts; the commit is checked
    out by a second init container (two argv commands, no shell in between)."""
    argv = ["git", *fetch.config, "clone", "--quiet", "--no-checkout", "--", fetch.url, f"{work_mount}/src"]
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in GIT_ENV.items()]
    if fetch.credential_url is not None:
        ref = secret_ref(job_name, GIT_CONFIG_KEY)
        env += [
            {"name": "GIT_CONFIG_COUNT", "value": "1"},
            {"name": "GIT_CONFIG_KEY_0", "valueFrom": ref},
            {"name": "GIT_CONFIG_VALUE_0", "value": fetch.url},
        ]
    return {
        "name": "source",
        "image": image,
        "command": argv,
        "env": env,
        "securityContext": dict(security),
        "volumeMounts": [{"name": "work", "mountPath": work_mount}],
    }


def checkout_init_container(
    commit: str | None, image: str, security: Mapping[str, Any], work_mount: str
) -> dict[str, Any]:
    return {
        "name": "checkout",
        "image": image,
        "command": ["git", "-C", f"{work_mount}/src", "checkout", "--quiet", "--detach", commit or "HEAD"],
        "env": [{"name": k, "value": v} for k, v in GIT_ENV.items()],
        "securityContext": dict(security),
        "volumeMounts": [{"name": "work", "mountPath": work_mount}],
    }
