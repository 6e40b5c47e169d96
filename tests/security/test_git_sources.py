"""A spec's git source cannot read the host's repositories or reach internal services (SSRF).

Real git repositories on disk, a real loopback HTTP listener that must never be contacted, the real
submission service against the session's real nats-server, and the executor's real checkout.
"""

from __future__ import annotations

import asyncio
import http.server
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from trainyard_executor.backends.source import SourceError, checkout
from trainyard_shared.gitpolicy import GitPolicy, RepoRefused, check_repo
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.security]

ADMIN = "git-sources-admin"


class Listener:
    """A loopback HTTP server that counts every request it is sent."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def git_repo(path: Path) -> str:
    path.mkdir(parents=True)
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(argv, cwd=path, env=env, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


# ------------------------------------------------------------------ the rule itself

REFUSED = [
    ("file:///etc", "local repository paths are not allowed"),
    ("/srv/other-team/repo", "local repository paths are not allowed"),
    ("ext::sh -c touch% /tmp/pwned", "scheme 'ext' is not allowed"),
    ("http://93.184.216.34/x.git", "scheme 'http' is not allowed"),
    ("git://93.184.216.34/x.git", "scheme 'git' is not allowed"),
    ("https://127.0.0.1/x.git", "non-public address (127.0.0.1)"),
    ("https://localhost/x.git", "non-public address"),
    ("https://169.254.169.254/latest/meta-data", "non-public address (169.254.169.254)"),
    ("https://10.1.2.3/x.git", "non-public address"),
    ("https://[::1]/x.git", "non-public address (::1)"),
    ("https://[::ffff:127.0.0.1]/x.git", "non-public address"),
    ("https://2130706433/x.git", "non-public address"),  # 127.0.0.1 as one number
    ("ssh://git@127.0.0.1/x.git", "non-public address"),
    ("git@127.0.0.1:team/x.git", "non-public address"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("repo", "why"), REFUSED, ids=[r for r, _ in REFUSED])
def test_the_default_rule_refuses_local_paths_other_schemes_and_internal_addresses(
    repo: str, why: str
) -> None:
    with pytest.raises(RepoRefused, match=re.escape(why)):
        check_repo(repo, GitPolicy())


@pytest.mark.unit
def test_a_public_https_host_is_pinned_and_git_gets_no_other_protocol(tmp_path: Path) -> None:
    checked = check_repo("https://93.184.216.34/team/x.git", GitPolicy())
    config = " ".join(checked.config)
    assert "http.curloptResolve=93.184.216.34:443:93.184.216.34" in config
    assert "protocol.allow=never" in config and "protocol.file.allow=never" in config
    assert "protocol.ext.allow=never" in config and "http.followRedirects=false" in config
    with pytest.raises(RepoRefused, match="not among"):
        check_repo("https://93.184.216.34/x.git", GitPolicy(hosts=("git.example.org",)))
    # a local path is allowed under a root, and a link out of the root does not count as inside
    inside = tmp_path / "repos" / "a"
    inside.mkdir(parents=True)
    (tmp_path / "repos" / "escape").symlink_to("/etc")
    policy = GitPolicy(local_roots=(tmp_path / "repos",))
    assert "protocol.file.allow=always" in check_repo(str(inside), policy).config
    with pytest.raises(RepoRefused, match="outside"):
        check_repo(str(tmp_path / "repos" / "escape"), policy)


# ------------------------------------------------------------------ the submission service


@pytest.fixture
async def api(nats_server, prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_GIT_LOCAL_ROOTS", "")  # this installation: the default rule
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=ADMIN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as client:
            yield client


@pytest.mark.service
async def test_submission_never_fetches_from_the_host_or_an_internal_service(api, listener, tmp_path):
    git_repo(tmp_path / "host-repo")
    for repo in (
        f"http://127.0.0.1:{listener.port}/team/x.git",
        f"https://127.0.0.1:{listener.port}/team/x.git",
        f"https://localhost:{listener.port}/team/x.git",
        str(tmp_path / "host-repo"),
        f"file://{tmp_path / 'host-repo'}",
    ):
        spec = {"name": "ssrf", "command": ["true"], "source": {"repo": repo, "ref": "main"}}
        resp = await api.post("/v1/jobs", json=spec, headers={"Authorization": f"Bearer {ADMIN}"})
        assert resp.status_code == 422, (repo, resp.text)
        assert [e["field"] for e in resp.json()["errors"]] == ["source.repo"], resp.text
        # a given commit skips resolution, not the rule: the executor would fetch the same repo
        pinned = {**spec, "source": {"repo": repo, "commit": "c" * 40}}
        resp = await api.post("/v1/jobs", json=pinned, headers={"Authorization": f"Bearer {ADMIN}"})
        assert resp.status_code == 422, (repo, resp.text)
    assert listener.requests == []


# ------------------------------------------------------------------ the executor's checkout


@pytest.mark.local
async def test_the_executor_clones_only_what_the_rule_allows_and_ignores_user_gitconfig(
    listener, tmp_path, monkeypatch
):
    roots = tmp_path / "allowed"
    commit = git_repo(roots / "team-repo")
    git_repo(tmp_path / "elsewhere")
    # a user gitconfig that would send the allowed repo's fetch to the internal service
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        f'[url "http://127.0.0.1:{listener.port}/"]\n\tinsteadOf = {roots / "team-repo"}\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TRAINYARD_GIT_LOCAL_ROOTS", str(roots))

    for refused in (
        str(tmp_path / "elsewhere"),
        f"file://{tmp_path / 'elsewhere'}",
        f"http://127.0.0.1:{listener.port}/x.git",
        "ext::sh -c 'touch /tmp/trainyard-pwned'",
    ):
        with pytest.raises(SourceError, match="refused"):
            await checkout(refused, None, tmp_path / "work" / "x")
        assert not (tmp_path / "work" / "x").exists()

    dest = tmp_path / "work" / "ok"
    await asyncio.wait_for(checkout(str(roots / "team-repo"), commit, dest), 60)
    assert (dest / ".git").is_dir()
    assert listener.requests == []

    monkeypatch.setenv("TRAINYARD_GIT_LOCAL_ROOTS", "")  # the default: no local path at all
    with pytest.raises(SourceError, match="local repository paths are not allowed"):
        await checkout(str(roots / "team-repo"), commit, tmp_path / "work" / "again")


@pytest.mark.unit
def test_a_repository_under_an_allowed_root_resolves_whoever_owns_it(tmp_path: Path) -> None:
    """The e2e stack mounts /repos (root's) into a service running as its own uid: with no
    gitconfig read, git refused it as "dubious ownership". An allowed root is trusted for that
    path alone; a repository outside the allowed roots is still refused before git runs."""
    import os

    from trainyard_submission.sources import resolve_commit

    head = git_repo(tmp_path / "repos" / "team")
    bare = tmp_path / "repos" / "team.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "repos" / "team"), str(bare)], check=True)
    for root, _dirs, files in os.walk(tmp_path / "repos"):
        for name in [*_dirs, *files, "."]:
            os.lchown(os.path.join(root, name), 54321, 54321)
    policy = GitPolicy(local_roots=(tmp_path / "repos",))
    for repo in (str(tmp_path / "repos" / "team"), f"file://{bare}", str(bare)):
        checked = check_repo(repo, policy)
        commit = asyncio.run(resolve_commit(checked.repo, "main", 30, checked.config, checked.fetch_options))
        assert commit == head, repo
    asyncio.run(checkout(str(bare), head, tmp_path / "work"))
    assert (tmp_path / "work" / ".git").is_dir()
    with pytest.raises(RepoRefused):
        check_repo(str(tmp_path / "elsewhere"), GitPolicy(local_roots=(tmp_path / "repos",)))
