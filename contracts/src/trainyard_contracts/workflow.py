"""Workflow objects: pipelines (DAGs of job steps), job arrays, schedules and triggers.

Validated strictly, as the job spec is: an unknown field is an error, and each error names the field
(``steps.1.depends.train``) and what was expected. A pipeline document is read by
:func:`parse_pipeline`, which substitutes ``${{ params.NAME }}`` before validating, so a parameter
may stand for a number or a list as well as for part of a string.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from trainyard_contracts.arrays import ArrayIndices, ArraySyntaxError, parse_array
from trainyard_contracts.spec import (
    NAME_PATTERN,
    FieldError,
    JobSpec,
    Name,
    ParamValue,
    SpecError,
    field_errors,
    parse_spec_document,
)
from trainyard_contracts.stepoutputs import OutputRef, output_refs
from trainyard_contracts.sweeps import SweepSpec, sweep_problems

STEP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
RUN_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{5,63}$"
MAX_STEPS = 500
MAX_PARAMS = 256
MAX_SUBJECT_CHARS = 256

# labels on a step's job (and on the trials of a sweep that is a step): which run and step it is
RUN_LABEL = "trainyard.dev/pipeline-run"
STEP_LABEL = "trainyard.dev/pipeline-step"
# what a sweep step passes on besides its best trial's parameters (each under its own name)
SWEEP_STEP_OUTPUTS = ("sweep_id", "trial", "objective", "job_id", "model_name", "model_version")

StepName = Annotated[str, StringConstraints(pattern=STEP_PATTERN)]
ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


def _array_syntax(value: str) -> str:
    try:
        parse_array(value)
    except ArraySyntaxError as exc:
        raise ValueError(str(exc)) from None
    return value


ArraySyntax = Annotated[str, AfterValidator(_array_syntax)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(StrEnum):
    """What a dependency must have ended as (Slurm's afterok / afternotok / afterany)."""

    succeeded = "succeeded"
    failed = "failed"
    finished = "finished"


class StepSpec(_Strict):
    """One step: a job, or with ``array`` one job per index (``TRAINYARD_ARRAY_INDEX``), or a
    ``sweep``: a hyperparameter search that succeeds with its best trial."""

    name: StepName
    job: JobSpec | None = Field(None, description="the step's job spec (the CLI reads `file:` into it)")
    sweep: SweepSpec | None = Field(
        None,
        description="instead of job: a sweep (as for `sweep run`; the CLI reads `file:` into it), "
        "started by the run; its outputs are the best trial's parameters, objective, job and model",
    )
    depends: list[StepName] | dict[StepName, Condition] = Field(
        default_factory=list,
        description="a list: every named step succeeded; a mapping: per step succeeded, failed or "
        "finished (ended in any way but a cancel)",
    )
    array: ArraySyntax | None = Field(None, description='Slurm array syntax, e.g. "0-99%8"')
    cache: bool = Field(
        False,
        description="reuse an earlier successful run of the same rendered spec and inputs, by the "
        "same submitter into the same queue (docs/workflows.md, Step caching)",
    )

    @field_validator("depends", mode="before")
    @classmethod
    def _depends_shape(cls, value: object) -> object:
        # one clear message instead of one per member of the union
        if isinstance(value, dict):
            allowed = [c.value for c in Condition]
            for dep, condition in value.items():
                if condition not in allowed:
                    raise ValueError(f"{dep}: expected one of {', '.join(allowed)} (got {condition!r})")
        elif not isinstance(value, list):
            raise ValueError(
                "expected a list of step names, or a mapping of step name: succeeded|failed|finished"
            )
        return value

    def conditions(self) -> dict[str, Condition]:
        """``depends`` as a mapping: a plain list means every step succeeded."""
        if isinstance(self.depends, dict):
            return dict(self.depends)
        return dict.fromkeys(self.depends, Condition.succeeded)


class PipelineSpec(_Strict):
    name: Name
    params: dict[ParamName, ParamValue] = Field(
        default_factory=dict, max_length=MAX_PARAMS, description="defaults; `-p key=value` overrides"
    )
    steps: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _a_dag(self) -> PipelineSpec:
        names = [step.name for step in self.steps]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise _field(f"steps.{i}.name", f"step {name!r} is named twice")
            seen.add(name)
        for i, step in enumerate(self.steps):
            for dep in step.conditions():
                if dep == step.name:
                    raise _field(f"steps.{i}.depends", "a step cannot depend on itself")
                if dep not in seen:
                    raise _field(f"steps.{i}.depends", f"names {dep!r}, which is not a step of this pipeline")
        cycle = find_cycle({step.name: list(step.conditions()) for step in self.steps})
        if cycle:
            raise _field("steps", "the dependencies form a cycle: " + " -> ".join(cycle))
        arrays = {step.name: parse_array(step.array) for step in self.steps if step.array}
        for i, step in enumerate(self.steps):
            _check_kind(i, step)
            _check_output_refs(i, step, arrays)
            _check_cache(i, step)
        return self

    def step(self, name: str) -> StepSpec:
        """The step named ``name`` (KeyError if none), by a map of the steps made once: the
        workflow service looks steps up on every send and decision of a 500-step DAG."""
        steps, by_name = self._steps_by_name
        if steps is not self.steps:  # a model_copy(update={"steps": ...}) carries the old map
            self.__dict__.pop("_steps_by_name", None)
            steps, by_name = self._steps_by_name
        return by_name[name]

    @cached_property
    def _steps_by_name(self) -> tuple[list[StepSpec], dict[str, StepSpec]]:
        # not a field: neither dumped nor in the JSON schema, and pydantic's equality compares
        # fields only
        return self.steps, {step.name: step for step in self.steps}


OUTPUT_REF_FIELDS = ("command", "env", "params")


def step_output_refs(job: JobSpec) -> dict[str, list[OutputRef]]:
    """Every ``${{ steps.<step>.outputs.<name> }}`` in ``job``, by field (``command.0``,
    ``env.NAME``, ``image``, ...); ValueError (naming the field) for a misspelt one."""
    found: dict[str, list[OutputRef]] = {}

    def walk(value: object, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, _join(where, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, _join(where, index))
        elif isinstance(value, str) and "${{" in value:
            try:
                refs = output_refs(value)
            except ValueError as exc:
                raise _field(where, str(exc)) from None
            if refs:
                found[where] = refs

    walk(job.model_dump(mode="json", exclude_defaults=True), "")
    return found


def _check_kind(i: int, step: StepSpec) -> None:
    """A step is a job or a sweep; a sweep step is one sweep (no array), whose template uses no
    other step's outputs and whose parameters do not shadow the step's own outputs."""
    if (step.job is None) == (step.sweep is None):
        raise _field(f"steps.{i}.job", "give job (a job spec) or sweep (a sweep), one of the two")
    if step.sweep is None:
        return
    where = f"steps.{i}.sweep"
    if step.array:
        raise _field(f"steps.{i}.array", "a sweep step is one sweep: its trials are its jobs")
    for problem in sweep_problems(step.sweep):
        raise _field(f"{where}.{problem.field}", problem.message)
    if re.search(r"\$\{\{\s*steps\.", step.sweep.model_dump_json()):
        raise _field(f"{where}.job", "a sweep step cannot use other steps' outputs (not yet)")
    for name in step.sweep.space:
        if name in SWEEP_STEP_OUTPUTS:
            raise _field(
                f"{where}.space.{name}",
                f"{name!r} is one of the step's own outputs ({', '.join(SWEEP_STEP_OUTPUTS)}): rename it",
            )


MAX_CACHED_INDICES = 1000  # a cache entry names every job of the step: it stays a small value


def _check_cache(i: int, step: StepSpec) -> None:
    """``cache: true`` on a job step (an array of at most MAX_CACHED_INDICES too); a sweep step's
    result is a search, not one job's: not cached."""
    if not step.cache:
        return
    if step.sweep is not None:
        raise _field(f"steps.{i}.cache", "a sweep step is not cached: its trials are a search, run it again")
    if step.array and parse_array(step.array).count > MAX_CACHED_INDICES:
        raise _field(
            f"steps.{i}.cache",
            f"an array step of at most {MAX_CACHED_INDICES} indices may be cached "
            "(a cache entry names every job)",
        )


MAX_LISTED_INDICES = 1000  # an array's values as one JSON list: it must fit in a job spec


def _check_output_refs(i: int, step: StepSpec, arrays: dict[str, ArrayIndices]) -> None:
    """A step's references to outputs: in command, env or params only (never text a shell reads),
    each to a step it depends on with ``succeeded`` (so the value exists when it runs); an index
    only of an array step, and one of its indices."""
    if step.job is None:
        return
    conditions = step.conditions()
    try:
        refs = step_output_refs(step.job)
    except _FieldProblem as problem:
        raise _field(f"steps.{i}.job.{problem.field}", problem.message) from None
    for where, found in refs.items():
        field = f"steps.{i}.job.{where}"
        root = where.split(".", 1)[0]
        if root not in OUTPUT_REF_FIELDS:
            raise _field(field, "a step's outputs may be used in command, env and params only")
        if root == "command" and step.job.shell:
            raise _field(
                field,
                'a shell would read the value as code: pass it in env and use "$NAME" in the command',
            )
        for ref in found:
            if conditions.get(ref.step) != Condition.succeeded:
                raise _field(
                    field,
                    f"refers to step {ref.step!r}, which this step does not depend on with succeeded "
                    "(only then are its outputs there)",
                )
            _check_array_ref(field, ref, arrays.get(ref.step))


def _check_array_ref(field: str, ref: OutputRef, array: ArrayIndices | None) -> None:
    """``outputs[<index>]`` names one of an array step's indices; an array's values as a list
    stay small enough to fill into a job spec."""
    if array is None:
        if ref.index is not None:
            raise _field(
                field,
                f"step {ref.step!r} is not an array: write ${{{{ steps.{ref.step}.outputs.{ref.name} }}}}",
            )
        return
    if ref.index is not None and ref.index not in array.indices:
        raise _field(field, f"step {ref.step!r} has no index {ref.index} (its array is {_span(array)})")
    if ref.index is None and array.count > MAX_LISTED_INDICES:
        raise _field(
            field,
            f"step {ref.step!r} is an array of {array.count} indices: its values come as one list of at "
            f"most {MAX_LISTED_INDICES}; name one index (outputs[<index>].{ref.name}) or pass them in "
            "its outputs folder ($TRAINYARD_INPUTS)",
        )


def _span(array: ArrayIndices) -> str:
    first, last = array.indices[0], array.indices[-1]
    return f"{first}-{last}, {array.count} indices" if array.count > 1 else str(first)


class _FieldProblem(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _field(field: str, message: str) -> _FieldProblem:
    return _FieldProblem(field, message)


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A cycle of ``graph`` (step -> the steps it depends on) as a closed path, or [] if none."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                path.append(node)
                on_path.add(node)
            deps = graph.get(node, [])
            if i < len(deps):
                stack.append((node, i + 1))
                nxt = deps[i]
                if nxt in on_path:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in done:
                    stack.append((nxt, 0))
                continue
            path.pop()
            on_path.discard(node)
            done.add(node)
    return []


class ArraySpec(_Strict):
    """A job array on its own: one array object, one child job per index."""

    array: ArraySyntax
    job: JobSpec


class ConcurrencyPolicy(StrEnum):
    allow = "allow"
    forbid = "forbid"
    replace = "replace"  # type: ignore[assignment]  # the policy's word; shadows str.replace on purpose


class ScheduleSpec(_Strict):
    """A cron schedule (5 fields) in a time zone, starting a pipeline on each tick."""

    name: Name
    cron: Annotated[str, StringConstraints(max_length=128)]
    timezone: str = "UTC"
    concurrency: ConcurrencyPolicy = ConcurrencyPolicy.allow
    starting_deadline_seconds: int | None = Field(None, ge=1, le=7 * 86400)
    suspended: bool = False
    pipeline: PipelineSpec
    params: dict[ParamName, ParamValue] = Field(default_factory=dict, max_length=MAX_PARAMS)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(
                'expected 5 cron fields: minute hour day-of-month month day-of-week ("0 3 * * *")'
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Paris)") from None
        return value


JmesPath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class TriggerSpec(_Strict):
    """A rule on bus subjects: a matching event starts the pipeline with parameters taken from the
    event, once per dedupe value, once per debounce window (docs/workflows.md, "Triggers").

    ``pipeline`` is the pipeline document as written: it is checked with its own defaults when the
    trigger is created, and the event's parameters are substituted into it when the trigger fires.
    ``job`` instead: a job spec, run as a one-step pipeline (:func:`job_pipeline`).
    """

    name: Name
    subject: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_*>$-]+(\.[A-Za-z0-9_*>$-]+)*$")] = Field(
        max_length=MAX_SUBJECT_CHARS,
        description="a NATS subject, wildcards allowed, within the operator's allow-list",
    )
    filter: JmesPath | None = Field(
        None, description="a JMESPath expression on the event's JSON body: the event counts when it is truthy"
    )
    params: dict[ParamName, JmesPath] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description="pipeline parameter -> JMESPath expression on the event (a string, number or "
        "true/false; null leaves the pipeline's default)",
    )
    dedupe_key: JmesPath | None = Field(
        None, description="JMESPath on the event: one run per value, ever (without it: one per event)"
    )
    debounce_seconds: float = Field(
        0,
        ge=0,
        le=86400,
        description="trailing debounce: the first matching event opens a window this long, and the "
        "last event in it fires, once, when it closes",
    )
    suspended: bool = Field(
        False, description="events that arrive while suspended are counted, never fired (trigger resume)"
    )
    pipeline: dict[str, Any] | None = Field(None, description="the pipeline document (as for `pipeline run`)")
    job: dict[str, Any] | None = Field(
        None,
        description="instead of pipeline: a job spec (as for `submit`), its params the defaults the "
        "event's parameters replace; run as a one-step pipeline whose step is named job",
    )

    @model_validator(mode="after")
    def _pipeline_or_job(self) -> TriggerSpec:
        if (self.pipeline is None) == (self.job is None):
            raise ValueError("give either pipeline (a pipeline document) or job (a job spec), not both")
        return self

    def pipeline_document(self) -> dict[str, Any]:
        """What a fire runs: ``pipeline``, or ``job`` as a one-step pipeline."""
        return self.pipeline if self.pipeline is not None else job_pipeline(self.job or {})


JOB_STEP = "job"
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def job_pipeline(job: dict[str, Any]) -> dict[str, Any]:
    """A job spec as the one-step pipeline a trigger runs (decision: a run, as an array is, so the
    trigger's run ids, dedupe and ``pipeline status`` work unchanged). The job's ``params`` are
    the pipeline's defaults, and each comes back into the job's params as ``${{ params.NAME }}``,
    so an event's value lands there as well as in any other reference in the job."""
    own = job.get("params")
    own = own if isinstance(own, dict) else {}
    params = {k: v for k, v in own.items() if _PARAM_NAME.match(str(k))}
    step_job = {**job, "params": {**own, **{k: f"${{{{ params.{k} }}}}" for k in params}}} if params else job
    return {"name": job.get("name"), "params": params, "steps": [{"name": JOB_STEP, "job": step_job}]}


_PARAM_REF = re.compile(r"\$\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def substitute(
    document: Any, params: dict[str, ParamValue], where: str = "", keep: frozenset[str] = frozenset()
) -> Any:
    """``${{ params.NAME }}`` replaced in every string of ``document``. A string that is exactly one
    reference takes the parameter's own type (a number stays a number). An unknown name raises
    SpecError naming the field it is in. A name in ``keep`` is left as written (a sweep step's own
    parameters: each trial's values, substituted when the trial is submitted)."""
    if isinstance(document, dict):
        return {key: substitute(value, params, _join(where, key), keep) for key, value in document.items()}
    if isinstance(document, list):
        return [substitute(value, params, _join(where, i), keep) for i, value in enumerate(document)]
    if not isinstance(document, str) or "${{" not in document:
        return document
    whole = _PARAM_REF.fullmatch(document.strip())
    if whole and whole.group(1) not in keep:
        return _param(params, whole.group(1), where)
    return _PARAM_REF.sub(
        lambda m: m.group(0) if m.group(1) in keep else str(_param(params, m.group(1), where)), document
    )


def _substitute_steps(body: dict[str, Any], values: dict[str, ParamValue]) -> dict[str, Any]:
    """The pipeline body with its parameters substituted; in a sweep step, the names of the sweep's
    own space are left for its trials (they win over a pipeline parameter of the same name)."""
    steps = body.get("steps")
    out: dict[str, Any] = substitute({k: v for k, v in body.items() if k != "steps"}, values)
    if "steps" not in body:
        return out
    if not isinstance(steps, list):
        return {**out, "steps": substitute(steps, values, "steps")}
    done = []
    for i, step in enumerate(steps):
        sweep = step.get("sweep") if isinstance(step, dict) else None
        space = sweep.get("space") if isinstance(sweep, dict) else None
        keep = frozenset(str(name) for name in space) if isinstance(space, dict) else frozenset()
        done.append(substitute(step, values, f"steps.{i}", keep))
    return {**out, "steps": done}


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _param(params: dict[str, ParamValue], name: str, where: str) -> ParamValue:
    if name not in params:
        known = ", ".join(sorted(params)) or "none"
        raise SpecError([FieldError(field=where, message=f"unknown parameter {name!r} (known: {known})")])
    return params[name]


def validate_pipeline(data: Any, params: dict[str, ParamValue] | None = None) -> PipelineSpec:
    """A pipeline mapping with its parameters substituted (``params`` over the document's own
    defaults), validated; SpecError names every bad field."""
    if not isinstance(data, dict):
        raise SpecError([FieldError(field="(document)", message="expected a mapping of pipeline fields")])
    defaults = data.get("params") or {}
    if not isinstance(defaults, dict):
        raise SpecError([FieldError(field="params", message="expected a mapping of name: value")])
    values = {**defaults, **(params or {})}
    body = {key: value for key, value in data.items() if key != "params"}
    resolved = {**_substitute_steps(body, values), **({"params": values} if values else {})}
    try:
        return PipelineSpec.model_validate(resolved)
    except ValidationError as exc:
        raise SpecError(_pipeline_errors(exc)) from exc


def _pipeline_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors; a DAG problem names its own field instead of the whole document."""
    out = []
    for error, raw in zip(field_errors(exc), exc.errors(include_url=False), strict=False):
        problem = (raw.get("ctx") or {}).get("error")
        if isinstance(problem, _FieldProblem):
            out.append(FieldError(field=problem.field, message=problem.message))
        else:
            out.append(error)
    return out


def parse_pipeline(text: str | bytes, params: dict[str, ParamValue] | None = None) -> PipelineSpec:
    """A YAML or JSON pipeline document; raises SpecError naming each bad field."""
    return validate_pipeline(parse_spec_document(text), params)


def parse_param_assignments(items: list[str]) -> dict[str, ParamValue]:
    """``-p key=value`` arguments; a value that reads as a number or true/false takes that type."""
    out: dict[str, ParamValue] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", key):
            raise SpecError([FieldError(field="-p", message=f"expected key=value, got {item!r}")])
        out[key] = _typed(value)
    return out


def _typed(value: str) -> ParamValue:
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


__all__ = [
    "NAME_PATTERN",
    "RUN_ID_PATTERN",
    "RUN_LABEL",
    "STEP_LABEL",
    "SWEEP_STEP_OUTPUTS",
    "ArraySpec",
    "ConcurrencyPolicy",
    "Condition",
    "PipelineSpec",
    "ScheduleSpec",
    "StepName",
    "StepSpec",
    "TriggerSpec",
    "parse_param_assignments",
    "parse_pipeline",
    "substitute",
    "validate_pipeline",
]
