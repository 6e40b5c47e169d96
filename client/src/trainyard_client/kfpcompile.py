"""Compile a Trainyard KFP plan (JSON on stdin) to Kubeflow Pipelines IR YAML (on stdout).

Runs in a Python that has the ``kfp`` SDK, which is not Trainyard's environment (see
``kfpexport.py``): this file imports only the standard library and ``kfp``, and is run as a script
(``python -I kfpcompile.py``). The plan is already checked; this only builds it with the SDK, so
the YAML is what ``kfp`` itself would write for the same pipeline.
"""

# no `from __future__ import annotations`: the SDK reads the components' annotations as types
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

TIMEOUT_GRACE_SECONDS = 30  # SIGTERM at the timeout, SIGKILL this much later (as the executor's grace)


def trainyard_step(argv: list, array_index: int, array_count: int, timeout_seconds: float) -> None:  # type: ignore[type-arg]
    """A command-only step: run its argv (no shell) in the task's environment.

    KFP ships this function's source into the task, so it imports what it needs inside.
    ``array_index`` < 0: not an array step."""
    import os
    import subprocess

    env = dict(os.environ)
    if array_index >= 0:
        env["TRAINYARD_ARRAY_INDEX"] = str(array_index)
        env["TRAINYARD_ARRAY_COUNT"] = str(array_count)
    try:
        code = subprocess.run(argv, env=env, timeout=timeout_seconds or None).returncode
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout_seconds} s") from None
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited with code {code}")


def command_component(step: dict[str, Any]) -> Any:
    component = dsl.component(trainyard_step, base_image=step["image"] or None)
    # the component's name is the task's name in the DAG: the step's
    component.component_spec.name = step["name"]
    component.name = step["name"]
    return component


def container_component(step: dict[str, Any]) -> Any:
    """The argv as the container's command. An array index or a timeout needs a value or a
    limit around the command that KFP cannot set per task: ``timeout`` and ``env`` (coreutils
    or busybox) wrap it, so such a step's image must have them."""
    prefix: list[Any] = []
    if step["timeout_seconds"]:
        prefix = ["timeout", "-k", str(TIMEOUT_GRACE_SECONDS), str(math.ceil(step["timeout_seconds"]))]
    argv = list(step["argv"])
    image = step["image"]
    array = step["array"]
    if array is None:

        def run() -> dsl.ContainerSpec:
            return dsl.ContainerSpec(image=image, command=[*prefix, *argv])

        func: Any = run
    else:
        count = f"TRAINYARD_ARRAY_COUNT={array['count']}"

        def run_index(array_index: int) -> dsl.ContainerSpec:
            index = dsl.ConcatPlaceholder(["TRAINYARD_ARRAY_INDEX=", array_index])
            return dsl.ContainerSpec(image=image, command=[*prefix, "env", index, count, *argv])

        func = run_index
    func.__name__ = func.__qualname__ = step["name"]
    return dsl.container_component(func)


def place(step: dict[str, Any], tasks: dict[str, Any], index: Any) -> Any:
    """One task of the step (inside a ParallelFor for an array), with its settings."""
    if step["kind"] == "container":
        component = container_component(step)
        task = component(array_index=index) if step["array"] else component()
    else:
        # every argument given, even the defaults: ignore_upstream_failure requires it
        task = command_component(step)(
            argv=step["argv"],
            array_index=-1 if index is None else index,
            array_count=step["array"]["count"] if step["array"] else 0,
            timeout_seconds=float(step["timeout_seconds"] or 0.0),
        )
    for name, value in step["env"].items():
        task.set_env_variable(name, value)
    cpu, memory = f"{step['cpu']:g}", f"{step['memory_mib']}Mi"
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    if step["gpu"]:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(step["gpu"])
    retries = step["retries"]
    if retries["limit"]:
        task.set_retry(
            num_retries=retries["limit"],
            backoff_duration=f"{math.ceil(retries['backoff_seconds'])}s",
            backoff_factor=2.0,  # Trainyard's backoff doubles each retry
        )
    task.set_caching_options(step["cache"])
    if step["after"]:
        task.after(*(tasks[name] for name in step["after"]))
        if step["ignore_upstream_failure"]:
            task.ignore_upstream_failure()
    return task


def build(plan: dict[str, Any]) -> Any:
    @dsl.pipeline(name=plan["name"], description="exported by `trainyard pipeline export --to kfp`")  # type: ignore[untyped-decorator]
    def pipeline() -> None:
        tasks: dict[str, Any] = {}
        for step in plan["steps"]:
            array = step["array"]
            if array is None:
                tasks[step["name"]] = place(step, tasks, None)
                continue
            with dsl.ParallelFor(items=array["indices"], parallelism=array["parallelism"]) as index:
                tasks[step["name"]] = place(step, tasks, index)

    return pipeline


def main() -> None:
    plan = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "pipeline.yaml"
        compiler.Compiler().compile(build(plan), str(out))
        sys.stdout.write(out.read_text())


if __name__ == "__main__":
    main()
