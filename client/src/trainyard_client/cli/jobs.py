"""Job commands: submit, why, status, logs, cancel, purge, executors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.arrays import is_array
from trainyard_client.cli.base import EXIT_INVALID, EXIT_REFUSED, api_errors, fail, settings, styled
from trainyard_client.cli.formatting import job_page
from trainyard_client.cli.output import Output, OutputOption, print_data, record_of, structured

JOB = typer.Argument(metavar="JOB")
FINISHED = ("succeeded", "failed", "timed_out", "cancelled", "rejected")


def _is_local_path(repo: str) -> bool:
    """A path rather than a URL: no scheme, not scp-like ``[user@]host:path``."""
    if "://" in repo or repo.startswith("file:"):
        return False
    head, colon, _ = repo.partition(":")
    return not (colon and "/" not in head and len(head) > 1)


def resolve_source(data: dict[str, Any], spec_dir: Path) -> bool:
    """Make a relative local ``source.repo`` absolute against the spec file's folder."""
    source = data.get("source")
    if not isinstance(source, dict):
        return False
    repo = source.get("repo")
    if not isinstance(repo, str) or not repo or not _is_local_path(repo):
        return False
    path = Path(repo).expanduser()
    if path.is_absolute() and path == Path(repo):
        return False
    source["repo"] = str((spec_dir / path).resolve())
    return True


def _read_spec(file: Path) -> tuple[str, Any, bool]:
    """The spec's text, its validated form, and whether the text had to change (a relative repo)."""
    from rich.markup import escape

    from trainyard_client.cli.arrays import check_array_field
    from trainyard_client.cli.base import print_field_errors
    from trainyard_client.workdir import resolve_workdir_path
    from trainyard_contracts import SpecError, parse_spec_document, validate_spec

    if str(file) == "-":
        text, spec_dir = sys.stdin.read(), Path.cwd()
    else:
        try:
            text = file.read_text()
        except OSError as exc:
            fail(f"[bold red]cannot read {escape(str(file))}[/]: {escape(exc.strerror or str(exc))}", 2)
        spec_dir = file.resolve().parent
    try:
        data = parse_spec_document(text)
        changed = resolve_source(data, spec_dir)
        changed = resolve_workdir_path(data, spec_dir) or changed
        check_array_field(data)
        spec = validate_spec({k: v for k, v in data.items() if k != "array"})
    except SpecError as exc:
        print_field_errors(exc.errors, f"invalid job spec: {file}")
        raise typer.Exit(EXIT_INVALID) from None
    if changed:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    return text, spec, changed


def _warn_uncommitted_source(spec: Any) -> None:
    from trainyard_client.workdir import local_repo_edits

    if spec.source is not None and spec.source.commit is None and local_repo_edits(spec.source.repo):
        cli.err.print(
            f"[yellow]warning[/]: {spec.source.repo} has uncommitted changes; the job runs its last "
            "commit without them (use workdir: to run the folder as it is)"
        )


def _upload_workdir(client: Any, body: str, folder: str, quiet: bool) -> dict[str, Any]:
    """The spec with its workdir folder packed, uploaded (unless the API has it) and replaced by
    its digest; a folder that cannot be packed stops here, saying what to leave out."""
    from rich.markup import escape

    from trainyard_contracts import parse_spec_document
    from trainyard_shared.blobs import PackError

    try:
        upload = client.upload_workdir(folder)
    except PackError as exc:
        fail(f"[bold red]workdir {escape(folder)} cannot be packed[/]: {escape(str(exc))}", EXIT_INVALID)
    if not quiet:
        what = "uploaded" if upload.uploaded else "already stored, not sent again"
        edits = f", uncommitted changes {upload.diff[:19]}" if upload.diff else ""
        commit = f", commit {upload.commit[:12]}" if upload.commit else ""
        cli.err.print(
            f"workdir {escape(folder)}: {upload.files} files, {upload.size / 1024:.1f} KiB, "
            f"{upload.digest[:19]} {what}{commit}{edits}"
        )
    data = parse_spec_document(body)
    data["workdir"] = upload.spec_field()
    return data


def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="job spec, YAML or JSON ('-' reads stdin)")],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow the job to its end (and its model)")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="the same key always returns the same job")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="ask what the scheduler would decide now; queue nothing")
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Validate a job spec locally, submit it, and print its job id."""
    body, spec, _ = _read_spec(file)
    conf = settings(ctx)
    _warn_uncommitted_source(spec)
    if dry_run:
        from trainyard_client.cli.render import print_dry_run

        with api_errors(conf.url), conf.client() as client:
            answer = client.dry_run(body)
        print_data(record_of(answer), output) if structured(output) else print_dry_run(answer)
        return
    with api_errors(conf.url), conf.client() as client:
        submitted: Any = body
        if spec.workdir is not None and spec.workdir.path is not None:
            submitted = _upload_workdir(client, body, spec.workdir.path, quiet or structured(output))
        if is_array(submitted):
            from trainyard_client.cli.arrays import show_array

            show_array(client.submit_array(submitted), output)
            return
        result = client.submit(submitted, idempotency_key=idempotency_key)
        if structured(output):
            print_data(record_of(result.job), output)
        elif quiet or output == Output.NAME:
            cli.out.print(result.job_id)
        else:
            note = " (duplicate: the job this key already submitted)" if result.duplicate else ""
            cli.out.print(f"job [bold]{result.job_id}[/] {styled(result.state)}{note}")
            cli.out.print(f"  {job_page(conf.url, result.job_id)}", markup=False, highlight=False)
        if not wait:
            return
        from trainyard_client.cli.follow import follow, follow_quietly

        try:
            model = spec.outputs.model if spec.outputs else None
            if quiet or output != Output.TABLE:  # nothing but the id (or record) printed above
                code = follow_quietly(client, result.job_id, model)
            else:
                code = follow(client, result.job_id, model)
        except KeyboardInterrupt:
            cli.err.print(
                f"stopped waiting; the job keeps going. `trainyard logs -f {result.job_id}` or"
                f" `trainyard cancel {result.job_id}`"
            )
            raise typer.Exit(130) from None
    raise typer.Exit(code)


def why(ctx: typer.Context, job_id: Annotated[str, JOB], output: OutputOption = Output.TABLE) -> None:
    """Why a job is still pending: the resource, quota or gang constraint, its place in its queue
    and an estimated start, as the scheduler leader saw it on its last pass."""
    from rich.markup import escape

    from trainyard_client.cli.formatting import clock
    from trainyard_client.cli.render import reason_lines

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        answer = client.why(job_id)
    if structured(output):
        print_data(record_of(answer), output)
    if not answer.found:
        fail(f"no such job: {escape(job_id)}", EXIT_REFUSED)
    if structured(output):
        return
    if answer.state in FINISHED:
        cli.out.print(
            f"job [bold]{escape(job_id)}[/] has finished: {styled(answer.state)} (nothing to wait for)"
        )
        return
    cli.out.print(f"job [bold]{escape(job_id)}[/] {styled(answer.state or 'unknown')}")
    for line in reason_lines(answer.reason):
        cli.out.print(f"  {line}")
    if answer.decided_at is not None:
        cli.out.print(
            f"  [dim]as of the scheduler's pass at {clock(answer.decided_at)} (leader {answer.leader})[/]"
        )


def logs(
    ctx: typer.Context,
    job_id: Annotated[str, JOB],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", min=1, help="one attempt only")] = None,
) -> None:
    """A job's output (stdout, stderr and Trainyard's own notes)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if attempt is not None and attempt > (attempts := client.get(job_id).attempt):
            fail(
                f"[bold red]job {job_id} has {attempts} attempt(s)[/]: there is no attempt {attempt}",
                EXIT_REFUSED,
            )
        if not follow:
            sys.stdout.write(client.logs(job_id, attempt=attempt))
            sys.stdout.flush()
            return
        from trainyard_client.cli.follow import print_log

        current = None
        try:
            for event in client.follow_logs(job_id, attempt=attempt):
                if event.event == "log":
                    current = print_log(event, current)
                elif event.event == "end":
                    cli.err.print(f"[dim]job {job_id} ended: {styled(event.state or 'unknown')}[/]")
                    break
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def cancel(ctx: typer.Context, job_id: Annotated[str, JOB], output: OutputOption = Output.TABLE) -> None:
    """Ask for a job to stop (queued: at once; running: SIGTERM, then SIGKILL after a grace)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        record = client.cancel(job_id)
    if output != Output.TABLE and output != Output.WIDE:
        from trainyard_client.cli.render import print_record

        print_record(record, output)
        return
    cli.out.print(f"cancel requested for [bold]{record.job_id}[/] (now {styled(record.state)})")


def purge(ctx: typer.Context, job_id: Annotated[str, JOB], output: OutputOption = Output.TABLE) -> None:
    """Remove a finished job: its record and the record's history, its secrets, its logs and its
    idempotency key (admin, or the job's team)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        removed = client.purge(job_id)
    if output in (Output.JSON, Output.YAML):
        print_data({"purged": removed}, output)
        return
    cli.out.print(
        f"purged [bold]{removed['job_id']}[/]: {removed['record_revisions']} record revisions, "
        f"{removed['log_chunks']} log chunks, secrets {'removed' if removed['secrets'] else 'none left'}, "
        f"idempotency key {'removed' if removed['idempotency_entry'] else 'none'}"
    )


def executors(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """Executors: backend, pool, lease, running attempts, and what each keeps a job from (job
    user, containment; -o wide: capabilities, gang network, caveats)."""
    from trainyard_client.cli.render import print_executors

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        rows = client.executors()
    print_executors(rows, output)
