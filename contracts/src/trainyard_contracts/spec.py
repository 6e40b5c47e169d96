"""The job spec: what to run, with which code, resources and outputs.

Validated strictly: an unknown field is an error, and every error names the field and what was
expected (see :func:`parse_spec` and :class:`SpecError`).
"""

from __future__ import annotations

import difflib
import itertools
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainyard_contracts.arrays import MAX_ARRAY_INDEX, MAX_ARRAY_SIZE
from trainyard_contracts.specsize import spec_size_error
from trainyard_contracts.units import parse_duration, parse_memory_mb

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
QUEUE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
MAX_COMMAND_BYTES = 128 * 1024
SECRET_MASK = "***"
RESERVED_DEVICE_ENV_PREFIXES = ("CUDA_", "NVIDIA_")

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
QueueName = Annotated[str, StringConstraints(pattern=QUEUE_PATTERN)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
ParamValue = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Resources(_Strict):
    """What one replica needs. Memory in MiB; accepts "512Mi", "4Gi", "2G" or a number of MiB."""

    cpu: float = Field(1.0, gt=0, le=4096, description="CPU cores (fractions allowed)")
    memory: int = Field(512, ge=1, le=64 * 1024 * 1024, description="memory in MiB")
    gpu: int = Field(0, ge=0, le=64, description="whole GPUs")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int:
        return parse_memory_mb(value)


class Retries(_Strict):
    limit: int = Field(0, ge=0, le=100, description="how many times a failed attempt is retried")
    backoff: float = Field(
        10.0, ge=0, le=86400, description="seconds before the first retry; doubles each retry"
    )

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff(cls, value: object) -> float:
        return parse_duration(value)


class Source(_Strict):
    """Where the code is. A credential written in the URL (``https://token@host/…``) is moved out
    of ``repo`` into ``credential`` when the spec is read, so ``repo`` (which the registry, MLflow
    and other teams' model listings show) never holds one; ``credential`` is a secret value."""

    repo: str = Field(min_length=1, max_length=4096, description="git URL or path")
    ref: str = Field("HEAD", min_length=1, max_length=256, description="branch, tag or commit")
    commit: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$",
        description="the full commit; resolved from ref at submission when absent",
    )
    credential: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="the userinfo secret of repo's URL (an http(s) token, an ssh password); a URL "
        "that carries one is split into repo and this field; secret: masked everywhere it is shown",
    )

    @model_validator(mode="before")
    @classmethod
    def _credential_out_of_the_url(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("repo"), str):
            secret = url_credentials(data["repo"])
            if secret is not None:
                if data.get("credential") not in (None, secret):
                    raise ValueError("give the credential either in repo's URL or in credential, not both")
                data = {**data, "repo": strip_url_credentials(data["repo"]), "credential": secret}
        return data

    def clone_url(self) -> str:
        """``repo`` with its credential put back: what git needs to fetch a private repository."""
        if self.credential is None:
            return self.repo
        match = _SCHEME.match(self.repo)
        if match is None:
            return self.repo
        scheme, rest = match.group(1), self.repo[match.end() :]
        user, at, host = rest.partition("@")
        if scheme.lower().startswith(("http", "ftp")) or not at:
            return f"{scheme}{self.credential}@{rest}"
        return f"{scheme}{user}:{self.credential}@{host}"


class Outputs(_Strict):
    model: ModelName | None = Field(None, description="registered-model name in MLflow")
    path: str = Field(
        "outputs",
        min_length=1,
        max_length=1024,
        description="directory, relative to the job's"
        " working directory, where the job writes its model (TRAINYARD_OUTPUT_DIR)",
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        normal = posixpath.normpath(value)
        if value.startswith("/") or normal == ".." or normal.startswith("../") or "\x00" in value:
            raise ValueError("must be a relative path inside the job's working directory")
        return normal


DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Workdir(_Strict):
    """A local folder the job runs in, as the user sees it, uncommitted edits included.

    In a spec file ``workdir: <path>`` (relative to the spec file's folder for the CLI, to the
    current directory for the SDK). The CLI/SDK packs the folder (``.gitignore`` and
    ``.trainyardignore`` honoured), uploads it (``PUT /v1/workdirs/<digest>``) and sends the
    digest instead: the API takes only ``digest``, never a path, and the bus never the bytes.
    ``commit`` and ``diff`` say which commit the folder was at and what was changed on top.
    """

    path: str | None = Field(
        None, min_length=1, max_length=4096, description="the local folder; replaced by digest on upload"
    )
    digest: str | None = Field(
        None, pattern=DIGEST_PATTERN, description="sha256 of the packed folder in the workdirs bucket"
    )
    commit: str | None = Field(
        None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$", description="HEAD of the folder's git checkout"
    )
    diff: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="sha256 of the uncommitted changes (git diff HEAD plus untracked files); none when clean",
    )

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, data: object) -> object:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _path_or_digest(self) -> Workdir:
        if self.path is None and self.digest is None:
            raise ValueError("give the folder (workdir: ./src) or, after an upload, its digest")
        return self


MAX_STEP_INPUTS = 1024
STEP_INPUT_PATH_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}(/(0|[1-9][0-9]{0,5}))?$"


class StepInput(_Strict):
    """One upstream step's outputs folder handed to a pipeline step: unpacked by the executor at
    ``$TRAINYARD_INPUTS/<path>/`` before the job starts. Set by the workflow service, never by a
    user (``POST /v1/jobs`` refuses ``inputs``); docs/workflows.md, "Step inputs"."""

    path: str = Field(
        pattern=STEP_INPUT_PATH_PATTERN,
        description="the upstream step's name, or <step>/<index> for one job of an array step",
    )
    digest: str = Field(
        pattern=DIGEST_PATTERN, description="sha256 of its packed outputs folder in the step outputs bucket"
    )


class RuntimeEnv(_Strict):
    """Local backend only: Python requirements installed into a cached venv keyed by their hash."""

    pip: list[Annotated[str, StringConstraints(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=256
    )


class ArrayTask(_Strict):
    """Which job of an array this is: set by the workflow service on each child job it submits,
    never by a user (``POST /v1/jobs`` refuses it); the executor turns it into
    ``TRAINYARD_ARRAY_INDEX`` and ``TRAINYARD_ARRAY_COUNT``."""

    index: int = Field(ge=0, le=MAX_ARRAY_INDEX, description="this job's index (Slurm's SLURM_ARRAY_TASK_ID)")
    count: int = Field(ge=1, le=MAX_ARRAY_SIZE, description="how many jobs the array has")


class JobSpec(_Strict):
    name: Name
    queue: QueueName = "default"
    priority: int = Field(0, ge=-1000, le=1000)
    command: list[str] = Field(
        min_length=1, description="argv list; run without a shell unless shell is true"
    )
    shell: bool = Field(False, description="run command[0] with /bin/sh -c; command must then be one string")
    run_as_root: bool = Field(
        False,
        description="container backends: run as the image's own user (root) instead of a non-root uid; "
        "only a queue with allow_root accepts it",
    )
    image: str | None = Field(None, min_length=1, max_length=512)
    env: dict[EnvName, str] = Field(default_factory=dict)
    secret_env: list[EnvName] = Field(
        default_factory=list,
        max_length=256,
        description="names in env whose values are secret: masked in events, API output and logs",
    )
    resources: Resources = Field(default_factory=Resources)
    replicas: int = Field(1, ge=1, le=1024)
    timeout: float | None = Field(None, gt=0, le=30 * 86400, description="seconds")
    retries: Retries = Field(default_factory=Retries)
    source: Source | None = None
    params: dict[Annotated[str, StringConstraints(min_length=1, max_length=250)], ParamValue] = Field(
        default_factory=dict
    )
    outputs: Outputs | None = None
    labels: dict[LabelKey, Annotated[str, StringConstraints(max_length=256)]] = Field(default_factory=dict)
    preemptible: bool = False
    runtime_env: RuntimeEnv | None = None
    workdir: Workdir | None = Field(
        None, description="a local folder packed and uploaded by the CLI/SDK; the job runs in it"
    )
    array_task: ArrayTask | None = Field(
        None,
        description="set by the workflow service on a job of an array (its index and the array's "
        "size); a submission over HTTP cannot set it (give array: on the spec instead)",
    )
    inputs: list[StepInput] = Field(
        default_factory=list,
        max_length=MAX_STEP_INPUTS,
        description="set by the workflow service on a pipeline step: its dependencies' outputs "
        "folders, unpacked under $TRAINYARD_INPUTS; a submission over HTTP cannot set it",
    )
    pass_outputs: bool = Field(
        False,
        description="set by the workflow service on a pipeline step that later steps depend on: the "
        "executor packs the outputs folder of a succeeded attempt for them; a submission over HTTP "
        "cannot set it",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(
                'must be an argv list such as ["python", "train.py"], not a shell string; '
                'to run a shell command say shell: true and give ["the command"]'
            )
        return value

    @field_validator("command")
    @classmethod
    def _argv_items(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the program (first item) cannot be empty")
        # checked on every parse of every record: one join, not a generator per argument
        joined = "".join(value)
        if "\x00" in joined:
            raise ValueError("arguments cannot contain NUL bytes")
        if len(joined) * 4 > MAX_COMMAND_BYTES and len(joined.encode()) > MAX_COMMAND_BYTES:
            raise ValueError(f"is larger than {MAX_COMMAND_BYTES // 1024} KiB")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        return None if value is None else parse_duration(value)

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if k.startswith("TRAINYARD_"))
        if reserved:
            raise ValueError(f"names starting with TRAINYARD_ are set by Trainyard: {reserved}")
        # the executor exposes only the attempt's own GPUs through these; a spec setting them
        # (NVIDIA_VISIBLE_DEVICES=all) would see every device on the machine
        devices = sorted(k for k in value if k.startswith(RESERVED_DEVICE_ENV_PREFIXES))
        if devices:
            raise ValueError(
                f"names starting with CUDA_ or NVIDIA_ are set by Trainyard (the attempt's GPUs): {devices}"
            )
        return value

    @field_validator("shell")
    @classmethod
    def _shell_form(cls, value: bool, info: ValidationInfo) -> bool:
        command = info.data.get("command")  # absent when command itself was invalid
        if value and command is not None and len(command) != 1:
            raise ValueError("with shell: true, command must be a list of exactly one string")
        return value

    @field_validator("workdir")
    @classmethod
    def _one_code_source(cls, value: Workdir | None, info: ValidationInfo) -> Workdir | None:
        if value is not None and info.data.get("source") is not None:
            raise ValueError("give either source (a git repository) or workdir (a local folder), not both")
        return value

    @field_validator("secret_env")
    @classmethod
    def _secrets_are_in_env(cls, value: list[str], info: ValidationInfo) -> list[str]:
        missing = sorted(set(value) - set(info.data.get("env") or {}))
        if missing:
            raise ValueError(f"names variables that are not in env: {missing}")
        return value

    def secret_values(self) -> list[str]:
        """What must never be shown: secret env values, the source's credential."""
        values = [self.env[name] for name in self.secret_env if self.env.get(name)]
        credential = self.source.credential if self.source else None
        return [*values, credential] if credential else values

    def redacted(self) -> JobSpec:
        """This spec with secret env values and source-URL credentials replaced by ``***``."""
        update: dict[str, Any] = {}
        if self.secret_env:
            update["env"] = {k: (SECRET_MASK if k in self.secret_env else v) for k, v in self.env.items()}
        if self.source and self.source.credential:
            update["source"] = self.source.model_copy(update={"credential": SECRET_MASK})
        return self.model_copy(update=update) if update else self

    def argv(self) -> list[str]:
        """The argv the executor runs: the command itself, or /bin/sh -c when asked for."""
        return ["/bin/sh", "-c", self.command[0]] if self.shell else list(self.command)


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@]*)@")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)")


def url_credentials(url: str) -> str | None:
    """The secret part of a URL's userinfo: all of it for http(s) (a token is often the user
    name), the password otherwise (``ssh://git@host`` names a user, not a secret)."""
    match = _USERINFO.match(url)
    if not match:
        return None
    scheme, userinfo = match.group(1).lower(), match.group(2)
    if scheme.startswith(("http", "ftp")):
        return userinfo or None
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


def _with_userinfo(url: str, replace: Callable[[str, str], str]) -> str:
    """``url`` with its userinfo and the ``@`` after it replaced by ``replace(userinfo, secret)``;
    ``url`` itself when it holds no credentials (see :func:`url_credentials`)."""
    secret = url_credentials(url)
    if secret is None:
        return url
    match = _USERINFO.match(url)
    assert match is not None
    return match.group(1) + replace(match.group(2), secret) + url[match.end() :]


def redact_url(url: str) -> str:
    """``url`` with its credentials (see :func:`url_credentials`) replaced by ``***``."""

    def masked(userinfo: str, secret: str) -> str:
        kept = "" if userinfo == secret else userinfo[: len(userinfo) - len(secret)]
        return kept + SECRET_MASK + "@"

    return _with_userinfo(url, masked)


# what one refusal reports, whatever the input (as Kubernetes does): the first errors, then a count;
# every field and message clipped, so a rejection always fits in one NATS message and a small answer
MAX_REPORTED_ERRORS = 100
MAX_ERROR_FIELD_CHARS = 256
MAX_ERROR_MESSAGE_CHARS = 1024
MORE_ERRORS_FIELD = "(more)"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strip_url_credentials(url: str) -> str:
    """``url`` without its credentials (see :func:`url_credentials`): ``https://host/…``,
    ``ssh://git@host/…``."""

    def kept(userinfo: str, secret: str) -> str:
        return "" if userinfo == secret else userinfo[: len(userinfo) - len(secret) - 1] + "@"

    return _with_userinfo(url, kept)


class FieldError(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    message: str

    @field_validator("field")
    @classmethod
    def _short_field(cls, value: str) -> str:
        return _clip(value, MAX_ERROR_FIELD_CHARS)

    @field_validator("message")
    @classmethod
    def _short_message(cls, value: str) -> str:
        return _clip(value, MAX_ERROR_MESSAGE_CHARS)


def capped_errors(errors: Iterable[FieldError], total: int | None = None) -> list[FieldError]:
    """The first :data:`MAX_REPORTED_ERRORS` of ``errors`` and, past them, one entry with the count
    of the rest (``total``: how many there are, when ``errors`` is not all of them)."""
    rest = iter(errors)
    shown = list(itertools.islice(rest, MAX_REPORTED_ERRORS + 1))
    if total is None and len(shown) > MAX_REPORTED_ERRORS:
        total = len(shown) + sum(1 for _ in rest)
    if total is None or total <= MAX_REPORTED_ERRORS:
        return shown
    more = total - MAX_REPORTED_ERRORS
    return [
        *shown[:MAX_REPORTED_ERRORS],
        FieldError(
            field=MORE_ERRORS_FIELD,
            message=f"{more} more errors not shown (the first {MAX_REPORTED_ERRORS} are)",
        ),
    ]


class SpecError(ValueError):
    """A job spec that cannot be accepted; ``errors`` says which field and what was expected."""

    def __init__(self, errors: list[FieldError]) -> None:
        already_capped = len(errors) == MAX_REPORTED_ERRORS + 1 and errors[-1].field == MORE_ERRORS_FIELD
        self.errors = errors if already_capped else capped_errors(errors)
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))


def field_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors as field errors, capped (:func:`capped_errors`) before any is formatted."""
    shown = itertools.islice(exc.errors(include_url=False), MAX_REPORTED_ERRORS)
    return capped_errors(_field_errors(shown), total=exc.error_count())


def _field_errors(raw: Iterable[Any]) -> Iterator[FieldError]:
    for err in raw:
        loc = ".".join(str(part) for part in err["loc"]) or "(spec)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field" + _did_you_mean(err["loc"])
        elif err["type"] == "missing":
            message = "required field is missing"
        elif err["type"] in ("model_type", "dict_type"):
            message = _mapping_hint(err["loc"], err.get("input"))
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        elif message.startswith("String should match pattern"):
            message = f"{message} (got {_clip(repr(err.get('input')), 200)})"
        yield FieldError(field=loc, message=message)


# what a scalar given for a mapping field most likely meant ("retries: 3")
MAPPING_EXAMPLES = {
    "retries": "{{limit: {value}}}",
    "resources": "{{cpu: {value}}}",
    "source": "{{repo: {value}}}",
    "outputs": "{{model: {value}}}",
}


def _mapping_hint(loc: tuple[int | str, ...], value: Any) -> str:
    """'retries is a mapping: {limit: 3}' rather than pydantic's 'valid dictionary or instance'."""
    name = str(loc[-1]) if loc else "(spec)"
    example = MAPPING_EXAMPLES.get(name)
    if example and isinstance(value, int | float | str) and not isinstance(value, bool):
        return f"{name} is a mapping: " + example.format(value=value)
    return f"{name} is a mapping (key: value), not {type(value).__name__}"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """' (did you mean gpu?)' for a misspelt field, from the fields known at that place."""
    model: Any = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        candidates = [
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return " (see the job spec reference)"
        model = candidates[0]
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else " (see the job spec reference)"


def parse_spec_document(text: str | bytes) -> dict[str, Any]:
    """YAML or JSON text to a mapping, with a clear error for anything else.

    A JSON object is read by the JSON parser first: YAML reads JSON too, but leaves an escaped
    surrogate pair (``"\\ud83d\\ude80"``, how ``json.dumps`` writes an emoji) as two broken halves.
    """
    try:
        data = _json_object(text)
        if data is None:
            data = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([FieldError(field="(document)", message=f"not valid YAML or JSON{where}")]) from exc
    except RecursionError as exc:  # PyYAML's composer recurses once per level of nesting
        raise SpecError([FieldError(field="(document)", message="nested too deeply")]) from exc
    if not isinstance(data, dict):
        raise SpecError([FieldError(field="(document)", message="expected a mapping of job spec fields")])
    return data


def _json_object(text: str | bytes) -> Any:
    """The document parsed as JSON when it is a JSON object, else None (then YAML reads it)."""
    head = text.lstrip()[:1]
    if head not in ("{", b"{"):
        return None
    try:
        return json.loads(text)
    except ValueError:  # not JSON after all (a YAML flow mapping, or broken): YAML says why
        return None


def validate_spec(data: Any) -> JobSpec:
    """A spec to accept: valid, and small enough that every message carrying it fits (specsize)."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(field_errors(exc)) from exc
    too_large = spec_size_error(spec)
    if too_large is not None:
        raise SpecError([too_large])
    return spec


def parse_spec(text: str | bytes) -> JobSpec:
    """Parse a YAML or JSON job spec; raises :class:`SpecError` naming each bad field."""
    return validate_spec(parse_spec_document(text))


def spec_to_json(spec: JobSpec) -> str:
    return json.dumps(spec.model_dump(mode="json", exclude_defaults=True))
