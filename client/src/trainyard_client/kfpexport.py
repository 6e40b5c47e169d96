"""A Trainyard pipeline as a Kubeflow Pipelines plan, and the ``kfp`` SDK that compiles it.

Two halves, because the ``kfp`` SDK cannot live in Trainyard's environment (it pins
``kubernetes<31``, ``protobuf<7`` and an exact ``requests``; the workspace holds newer ones):

- :func:`plan_kfp` (pure, here): the pipeline checked against what KFP can express, turned into a
  plain JSON plan (one entry per step, in dependency order). Anything KFP cannot do is a
  :class:`~trainyard_contracts.SpecError` naming the step and field, so nothing is half exported.
- ``kfpcompile.py`` (beside this file; stdlib and ``kfp`` only) runs in a Python that has
  ``kfp``, builds the pipeline with the SDK and writes its IR YAML: valid by construction.
  :func:`compile_plan` finds that Python (:func:`find_kfp_python`) and runs it.

docs/kubeflow.md says what maps to what, and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainyard_contracts import FieldError, SpecError
from trainyard_contracts.arrays import parse_array
from trainyard_contracts.workflow import Condition, PipelineSpec, StepSpec, step_output_refs

KFP_VERSION = "2.17.3"
# where `make kfp-venv` (and `make test-kubeflow`) build the SDK's own venv
KFP_VENV = Path.home() / ".cache" / "trainyard" / "kfp-venv"
KFP_PYTHON_ENV = "TRAINYARD_KFP_PYTHON"
COMPILE_SCRIPT = Path(__file__).with_name("kfpcompile.py")
COMPILE_TIMEOUT_SECONDS = 300.0

# Job spec fields that only Trainyard's scheduler and registry read: a KFP run has no queue,
# priority or preemption of Trainyard's, and records no params or labels in Trainyard's MLflow.
# Left out of the plan, and named in a note, never silently.
DROPPED_JOB_FIELDS = ("queue", "priority", "labels", "preemptible", "params", "run_as_root")
# what the plan carries
MAPPED_JOB_FIELDS = ("name", "command", "shell", "image", "env", "resources", "timeout", "retries")
# what KFP (its SDK without the kfp-kubernetes extension) cannot do; the message says what to do
REFUSED_JOB_FIELDS = {
    "replicas": "a gang of replicas is not a KFP task (one pod per task): run it as a TrainJob "
    "with the kubeflow executor backend, or give replicas: 1",
    "source": "a KFP task clones no repository: build the code into the image",
    "workdir": "a KFP task receives no uploaded folder: build the code into the image",
    "runtime_env": "a KFP task builds no venv: install the packages in the image",
    "secret_env": "the kfp SDK sets no env from a Secret (kfp-kubernetes does, on the cluster): "
    "remove it here and add the Secret there",
    "outputs": "a KFP run registers no model version in Trainyard's registry",
    "array_task": "set by the workflow service, never in a document",
}
MAPPED_STEP_FIELDS = ("name", "job", "depends", "array", "cache")


@dataclass(frozen=True)
class KfpPlan:
    """What ``kfpcompile.py`` reads (``document``), and the fields left out (``dropped``)."""

    document: dict[str, Any]
    dropped: tuple[str, ...]


def plan_kfp(spec: PipelineSpec, default_image: str | None = None) -> KfpPlan:
    """The pipeline as a KFP plan; SpecError names every field KFP cannot express.

    A step with an ``image`` becomes a container component (its argv is the container's command);
    a step without one (a command-only step, as the local backend runs it) becomes a lightweight
    Python component that runs the argv in ``default_image`` (KFP's default, ``python:3.11``,
    when None), so the same document runs under ``kfp.local``'s subprocess runner.
    """
    errors: list[FieldError] = []
    dropped: list[str] = []
    index = {step.name: i for i, step in enumerate(spec.steps)}
    steps = [
        _plan_step(spec.steps[index[name]], index[name], default_image, errors, dropped)
        for name in _dependency_order(spec)
    ]
    if errors:
        raise SpecError(errors)
    return KfpPlan(
        document={"name": spec.name, "kfp_version": KFP_VERSION, "steps": steps}, dropped=tuple(dropped)
    )


def _plan_step(
    step: StepSpec, i: int, default_image: str | None, errors: list[FieldError], dropped: list[str]
) -> dict[str, Any]:
    at = f"steps.{i}"
    for name in sorted(step.model_fields_set - set(MAPPED_STEP_FIELDS)):
        errors.append(FieldError(field=f"{at}.{name}", message="not exported to KFP by this version"))
    job = step.job
    if job is None:  # a sweep step: refused above, `sweep` is no field KFP has
        return {}
    for name in sorted(job.model_fields_set):
        field = f"{at}.job.{name}"
        if name in DROPPED_JOB_FIELDS:
            dropped.append(field)
        elif name in REFUSED_JOB_FIELDS:
            if name == "replicas" and job.replicas == 1:
                continue
            errors.append(FieldError(field=field, message=REFUSED_JOB_FIELDS[name]))
        elif name not in MAPPED_JOB_FIELDS:
            errors.append(FieldError(field=field, message="not exported to KFP by this version"))
    for where in sorted(step_output_refs(job)):
        errors.append(
            FieldError(
                field=f"{at}.job.{where}",
                message="uses a step's outputs, which this export does not pass on (KFP would need them as "
                "component outputs): keep this pipeline in Trainyard",
            )
        )
    after, ignore_upstream_failure = _trigger(step, at, errors)
    argv = ["/bin/sh", "-c", job.command[0]] if job.shell else list(job.command)
    array = None
    if step.array is not None:
        indices = parse_array(step.array)
        array = {
            "indices": list(indices.indices),
            "count": indices.count,
            "parallelism": indices.max_running or 0,
        }
    return {
        "name": step.name,
        "kind": "container" if job.image else "command",
        "image": job.image or default_image,
        "argv": argv,
        "env": dict(job.env),
        "cpu": job.resources.cpu,
        "memory_mib": job.resources.memory,
        "gpu": job.resources.gpu,
        "timeout_seconds": job.timeout,
        "retries": {"limit": job.retries.limit, "backoff_seconds": job.retries.backoff},
        "cache": step.cache,
        "after": after,
        "ignore_upstream_failure": ignore_upstream_failure,
        "array": array,
    }


def _trigger(step: StepSpec, at: str, errors: list[FieldError]) -> tuple[list[str], bool]:
    """The steps it runs after, and whether it runs when they failed too.

    KFP's trigger policy is per task: every upstream task succeeded (``.after``), or every one
    completed in any way (``ignore_upstream_failure``). So ``succeeded`` and ``finished`` map,
    but not mixed in one step, and ``failed`` (run only when a step failed) does not at all.
    """
    conditions = step.conditions()
    for dep, condition in conditions.items():
        if condition is Condition.failed:
            errors.append(
                FieldError(
                    field=f"{at}.depends.{dep}",
                    message="KFP cannot run a task only when another failed: use 'finished' and "
                    "decide in the step, or keep this pipeline in Trainyard",
                )
            )
    kinds = {c for c in conditions.values() if c is not Condition.failed}
    if len(kinds) > 1:
        errors.append(
            FieldError(
                field=f"{at}.depends",
                message="KFP triggers a task when all its dependencies succeeded or when all finished: "
                "give every dependency of this step the same condition",
            )
        )
    return list(conditions), kinds == {Condition.finished}


def _dependency_order(spec: PipelineSpec) -> list[str]:
    """Step names with every dependency before its dependents (document order otherwise):
    the SDK needs a task to exist before another is placed after it."""
    done: list[str] = []
    placed: set[str] = set()
    remaining = [step.name for step in spec.steps]
    while remaining:
        for name in remaining:
            if set(spec.step(name).conditions()) <= placed:
                done.append(name)
                placed.add(name)
                remaining.remove(name)
                break
        else:  # the spec refuses cycles; this keeps the loop finite regardless
            raise ValueError("the dependencies form a cycle")
    return done


class KfpMissing(RuntimeError):
    """No Python with the ``kfp`` SDK was found; the message says how to get one."""


def find_kfp_python() -> str:
    """A Python that can import ``kfp``: ``$TRAINYARD_KFP_PYTHON``, else this one, else the venv
    ``make kfp-venv`` builds (``~/.cache/trainyard/kfp-venv``)."""
    how = (
        f"The kfp SDK cannot share Trainyard's environment (kfp {KFP_VERSION} pins kubernetes<31 and "
        f"protobuf<7), so it gets a venv of its own: run `make kfp-venv` in the repository (builds "
        f"{KFP_VENV}), or install kfp=={KFP_VERSION} in any venv and set {KFP_PYTHON_ENV} to its python"
    )
    named = os.environ.get(KFP_PYTHON_ENV)
    if named:
        if not _has_kfp(named):
            raise KfpMissing(f"{KFP_PYTHON_ENV}={named} cannot import kfp. {how}")
        return named
    for candidate in (sys.executable, str(KFP_VENV / "bin" / "python")):
        if Path(candidate).exists() and _has_kfp(candidate):
            return candidate
    raise KfpMissing(f"the kfp SDK is not installed. {how}")


def _has_kfp(python: str) -> bool:
    # found, not imported: importing kfp takes seconds, and the compile imports it anyway
    try:
        probe = subprocess.run(
            [
                python,
                "-I",
                "-c",
                "import importlib.util, sys; sys.exit(importlib.util.find_spec('kfp') is None)",
            ],
            capture_output=True,
            timeout=COMPILE_TIMEOUT_SECONDS,
        )
    except OSError:  # no such interpreter
        return False
    return probe.returncode == 0


def compile_plan(plan: KfpPlan, python: str) -> str:
    """The IR YAML the ``kfp`` SDK compiles from ``plan`` (RuntimeError with its stderr if not).

    ``-I``: the script's folder (this package's) is not put on sys.path, so none of its modules
    can shadow one that kfp imports; nor are PYTHONPATH and the user's site read."""
    done = subprocess.run(
        [python, "-I", str(COMPILE_SCRIPT)],
        input=json.dumps(plan.document),
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kfp could not compile the pipeline:\n{done.stderr.strip()[-4000:]}")
    return done.stdout
