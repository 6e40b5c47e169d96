"""The CLI's start-up discipline (issue 16; docs/performance.md "CLI start-up"): ``--help`` and
``status -o json`` load neither pydantic, httpx, rich nor the contracts, and typer builds only the
command that runs; the lazily built commands are exactly what registering them eagerly gave.
No timings here (``make bench-cli`` measures them): what is imported and built is what costs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from trainyard_client import plain_http
from trainyard_client.cli import app
from trainyard_client.cli.app import COMMANDS, command_target, main_options
from trainyard_client.connection import TrainyardError, TrainyardUnavailable, get_json

# the heavy ones a read path must not pay for (each cost milliseconds to tens of them to import),
# and entry-point scanning (importlib.metadata, pkg_resources: a walk of every installed package)
HEAVY = (
    "pydantic",
    "httpx",
    "rich",
    "yaml",
    "trainyard_contracts",
    "email",
    "ssl",
    "http.client",
    "importlib.metadata",
    "pkg_resources",
)

# runs the CLI's entry point as `trainyard ARGS...` does, then says what was imported and built
PROBE = """
import json, sys
import typer.main
built = []
real = typer.main.get_command_from_info
def counting(command_info, **kwargs):
    built.append(command_info.name or command_info.callback.__name__)
    return real(command_info, **kwargs)
typer.main.get_command_from_info = counting
sys.argv = ["trainyard", *sys.argv[1:]]
from trainyard_client.cli import main
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules), "built": built}))
"""


def probe(*args: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert "\nPROBE " in done.stderr, done.stderr[-2000:]
    return done.stdout, json.loads(done.stderr.rpartition("\nPROBE ")[2])


def heavy_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == heavy or m.startswith(f"{heavy}.") for heavy in HEAVY)]


@pytest.mark.unit
def test_help_loads_nothing_heavy_and_builds_no_command():
    out, seen = probe("--help")
    assert seen["code"] == 0
    assert heavy_in(seen["modules"]) == []
    assert seen["built"] == []  # the listing comes from the docstrings
    listed = out.split("Commands:")[1].split()
    assert [name for name in COMMANDS if name not in listed] == []


@pytest.mark.unit
def test_status_json_loads_only_the_listing_and_builds_only_status(fake_api):
    for n in range(2):
        fake_api.add_job(f'name: job-{n}\ncommand: ["true"]\n')
    out, seen = probe("status", "--url", fake_api.url, "--token", fake_api.token, "-o", "json")
    assert seen["code"] == 0, out
    assert [row["name"] for row in json.loads(out)] == ["job-1", "job-0"]
    assert heavy_in(seen["modules"]) == []
    assert seen["built"] == ["status"]
    command_modules = {f"trainyard_client.cli.{target.partition(':')[0]}" for target in COMMANDS.values()}
    assert sorted(command_modules & set(seen["modules"])) == ["trainyard_client.cli.listing"]


def eager_app() -> typer.Typer:
    """The app as it was before the commands were built lazily: every one registered on it."""
    eager = typer.Typer(
        name="trainyard",
        help=app.info.help,
        rich_markup_mode=None,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    eager.callback()(main_options)
    for name in COMMANDS:
        target = command_target(name)
        if isinstance(target, typer.Typer):
            eager.add_typer(target, name=name)
        else:
            eager.command(name)(target)
    return eager


def command_paths(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name in getattr(command, "commands", {}):
        yield from command_paths(command.commands[name], [*path, name])


@pytest.mark.unit
def test_every_help_page_is_what_eager_registration_gave():
    eager = eager_app()
    runner = CliRunner()
    paths = list(command_paths(typer.main.get_command(eager), []))
    assert len(paths) > len(COMMANDS)  # the groups' commands too
    for path in [*paths, ["stauts"], []]:  # a typo gets the same "Did you mean", no args the help
        lazy_result = runner.invoke(app, [*path, "--help"] if path != ["stauts"] else path)
        eager_result = runner.invoke(eager, [*path, "--help"] if path != ["stauts"] else path)
        assert (lazy_result.exit_code, lazy_result.output) == (eager_result.exit_code, eager_result.output), (
            path
        )


# the plain-socket GET (plain_http): framing, and the cases it leaves to urllib


@pytest.mark.unit
def test_a_chunked_answer_is_joined_and_a_short_one_refused():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2;x=y\r\n2]\r\n0\r\n\r\n"
    assert plain_http.parse(chunked) == (200, "OK", b"[1, 2]")
    sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
    assert plain_http.parse(sized) == (404, "Not Found", b"{}")
    for cut in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n",
        b"garbage\r\n\r\n",
    ):
        with pytest.raises(plain_http.MalformedAnswer):
            plain_http.parse(cut)
    with pytest.raises(plain_http.MalformedAnswer):
        plain_http.parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1")


HOLD_OPEN = threading.Event()  # set when the test ends: until then /held answers keep the connection


class Answers(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/moved"):
            self.send_response(307)
            self.send_header("Location", "/chunked?via=redirect")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith(("/chunked", "/held/chunked")):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
            for part in (body[:5], body[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            self.hold()
            return
        if self.path.startswith("/held/sized"):
            body = b'{"whole": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.hold()
            return
        body = b'{"title": "no such job", "detail": "x1", "status": 404}'
        self.send_response(404)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def hold(self) -> None:
        """A server that ignores ``Connection: close``: the connection stays open after the answer."""
        if self.path.startswith("/held"):
            self.wfile.flush()
            HOLD_OPEN.wait(120)


@pytest.fixture
def answers_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    HOLD_OPEN.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    HOLD_OPEN.set()
    server.shutdown()


@pytest.mark.integration
def test_get_json_reads_chunks_follows_a_redirect_and_keeps_the_errors(answers_url, closed_port_url):
    assert get_json(answers_url, "/chunked", "tok", [("a", "b c")]) == {
        "path": "/chunked?a=b+c",
        "auth": "Bearer tok",
    }
    assert get_json(answers_url, "/moved", None, [])["path"] == "/chunked?via=redirect"  # by urllib
    with pytest.raises(TrainyardError) as refused:
        get_json(answers_url, "/v1/jobs/x1", "tok", [])
    assert (refused.value.status, refused.value.title, refused.value.detail) == (404, "no such job", "x1")
    with pytest.raises(TrainyardUnavailable):
        get_json(closed_port_url, "/v1/jobs", "tok", [])


@pytest.mark.integration
def test_a_whole_answer_is_read_without_waiting_for_the_server_to_close(answers_url):
    # were the client to read until the close, each would raise its read timeout (exit code 3)
    assert get_json(answers_url, "/held/sized", None, [], timeout=20) == {"whole": True}
    assert get_json(answers_url, "/held/chunked", None, [], timeout=20)["path"] == "/held/chunked"


@pytest.mark.unit
def test_a_proxy_or_tls_leaves_the_request_to_urllib(monkeypatch):
    from urllib.parse import urlsplit

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert plain_http.usable(urlsplit("http://127.0.0.1:8700/v1/jobs"))
    assert not plain_http.usable(urlsplit("https://trainyard.example/v1/jobs"))
    assert not plain_http.usable(urlsplit("http://user:pw@127.0.0.1:8700/v1/jobs"))
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert not plain_http.usable(urlsplit("http://127.0.0.1:8700/v1/jobs"))
