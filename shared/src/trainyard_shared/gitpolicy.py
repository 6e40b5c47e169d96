"""Which git sources an installation fetches from, and the git options every fetch runs with.

A spec's ``source.repo`` is chosen by whoever submits, and both the submission service (``git
ls-remote``) and the executor (``git clone``) act on it from inside the installation. Without a
rule a team could read the executor host's repositories (``file://``, a local path) or make it talk
to internal HTTP services (SSRF). So, per installation (``TRAINYARD_GIT_*``):

- schemes: ``https`` and ``ssh`` by default (an scp-like ``user@host:path`` is ssh); ``ext::`` never;
- hosts: any by default, or only those listed (``*.example.org`` matches below the domain);
- addresses: every address the host resolves to must be public (no loopback, link-local, private,
  unique-local, multicast or reserved one) unless the installation allows private addresses;
- local paths (and ``file://``): refused unless they lie under one of ``local_roots``. The embedded
  stack (``trainyard up``) sets its working directory as the one root, so ``source: {repo: .}``
  keeps working there.

DNS rebinding: the host is resolved once here; for http(s) git is then pinned to exactly the
addresses checked (``http.curloptResolve``) and follows no redirect, so a second answer cannot send
it elsewhere. ssh connects by name (no pinning); an ssh fetch to a rebound name can reach an ssh
service only, which is why ``allow_private_addresses`` stays off unless every host is trusted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>\[[^\]]+\]|[^/:]+):(?!//)")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_REMOTE_HELPER = re.compile(r"^(?P<helper>[A-Za-z][A-Za-z0-9+.-]*)::")  # ext::<command>, fd::...
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}


class RepoRefused(ValueError):
    """The installation does not fetch from this repository; the message says why."""


class GitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_GIT_", extra="ignore")

    allowed_schemes: str = Field("https,ssh", description="comma-separated URL schemes git may use")
    allowed_hosts: str = Field(
        "", description="comma-separated host names (*.domain for below it); empty: any"
    )
    allow_private_addresses: bool = Field(
        False, description="allow hosts that resolve to loopback, link-local or private addresses"
    )
    local_roots: str = Field(
        "", description=f"local repository paths allowed under these folders ({os.pathsep!r}-separated)"
    )

    def policy(self) -> GitPolicy:
        return GitPolicy(
            schemes=frozenset(s.strip().lower() for s in self.allowed_schemes.split(",") if s.strip()),
            hosts=tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()),
            allow_private=self.allow_private_addresses,
            local_roots=tuple(Path(p).resolve() for p in self.local_roots.split(os.pathsep) if p.strip()),
        )


@dataclass(frozen=True)
class GitPolicy:
    schemes: frozenset[str] = frozenset({"https", "ssh"})
    hosts: tuple[str, ...] = ()
    allow_private: bool = False
    local_roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Checked:
    """A repository the policy allows, and the git ``-c`` options to fetch it with."""

    repo: str
    local: bool
    config: tuple[str, ...]  # "-c", "name=value", ...
    fetch_options: tuple[str, ...] = ()  # options of the fetching command (ls-remote, clone)


def check_repo(repo: str, policy: GitPolicy) -> Checked:
    """Raise :class:`RepoRefused`, or say how git may fetch ``repo``."""
    helper = _REMOTE_HELPER.match(repo)
    if helper is not None:
        raise RepoRefused(
            f"scheme {helper.group('helper').lower()!r} is not allowed here (a git remote helper)"
        )
    match = _SCHEME.match(repo)
    scp_like = _SCP_LIKE.match(repo)
    if match is None and scp_like and not repo.startswith(("/", ".")):
        scheme, host, port = "ssh", scp_like.group("host").strip("[]"), 22
    elif match is None:
        return _check_local(repo, Path(repo), policy)
    else:
        scheme = match.group("scheme").lower()
        if scheme == "file":
            return _check_local(repo, Path(urlsplit(repo).path), policy)
        parts = urlsplit(repo)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        except ValueError as exc:
            raise RepoRefused(f"{scheme}:// URL with an invalid port") from exc
    if scheme not in policy.schemes or scheme in ("ext", "file"):
        allowed = ", ".join(sorted(policy.schemes)) or "none"
        raise RepoRefused(f"scheme {scheme!r} is not allowed here (allowed: {allowed})")
    if not host:
        raise RepoRefused("the URL names no host")
    if policy.hosts and not any(_host_matches(host, pattern) for pattern in policy.hosts):
        raise RepoRefused(f"host {host!r} is not among this installation's git hosts")
    addresses = _resolve(host, port)
    if not policy.allow_private:
        for address in addresses:
            if not _public(address):
                raise RepoRefused(f"host {host!r} resolves to a non-public address ({address})")
    config = [*_protocols(policy.schemes, local=False), "-c", "http.followRedirects=false"]
    if scheme in ("http", "https") and addresses:
        # git resolves the name again: pin it to the addresses checked here (DNS rebinding)
        config += ["-c", f"http.curloptResolve={host}:{port}:{','.join(_bracketed(a) for a in addresses)}"]
    return Checked(repo, local=False, config=tuple(config))


def _check_local(repo: str, path: Path, policy: GitPolicy) -> Checked:
    if not policy.local_roots:
        raise RepoRefused("local repository paths are not allowed here (give an https or ssh URL)")
    resolved = path.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in policy.local_roots):
        raise RepoRefused("this local path is outside the folders this installation allows")
    # an allowed root is the operator's word that its repositories are trusted, whoever owns them
    # (a mounted /repos is root's while the service runs as its own uid). git reads no gitconfig
    # here and clears command-line config for a local transport's upload-pack, so the exception,
    # for this path only, goes on the upload-pack command (run by git through sh: quoted)
    trusted = [f"safe.directory={p}" for p in dict.fromkeys((str(resolved), str(path)))]
    in_sh = " ".join(f"-c {shlex.quote(t)}" for t in trusted)
    return Checked(
        repo,
        local=True,
        config=(*_protocols(policy.schemes, local=True), *(a for t in trusted for a in ("-c", t))),
        fetch_options=(f"--upload-pack=git {in_sh} upload-pack",),
    )


def _protocols(schemes: frozenset[str], local: bool) -> list[str]:
    config = ["-c", "protocol.allow=never", "-c", "protocol.ext.allow=never"]
    for scheme in sorted(schemes - {"ext", "file"}):
        config += ["-c", f"protocol.{scheme}.allow=always"]
    config += ["-c", f"protocol.file.allow={'always' if local else 'never'}"]
    return config


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port or None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise RepoRefused(f"host {host!r} does not resolve") from exc
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def git_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment git runs with: no prompt, no user or system gitconfig."""
    env = dict(base if base is not None else os.environ)
    # configuration that would override the -c options given per fetch
    for name in ("GIT_ALLOW_PROTOCOL", "GIT_PROTOCOL_FROM_USER", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"):
        env.pop(name, None)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull})
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env
