"""Trainyard: metrics a job logs through MLflow (``mlflow.log_metric``, ``log_metrics``, autologging)
also go to ``trainyard.report``, so they reach the bus while the job runs, not only at its end.

The executor puts this file on the job's ``PYTHONPATH`` beside ``trainyard.py``; Python runs it at
start-up. It does nothing until the job imports MLflow (then it wraps ``MlflowClient.log_metric``
and ``log_batch``, which the fluent API calls; MLflow's own logging is unchanged, a failure here is
swallowed), and nothing at all outside a job or with ``TRAINYARD_MLFLOW_METRICS=0``. Then it runs
the ``sitecustomize`` it shadows (a distribution's own), so that one still applies.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from typing import Any

_TARGET = "mlflow.tracking.client"
_INVALID = re.compile(r"[^A-Za-z0-9_.:/-]")


def _metric_name(key: str) -> str:
    """An MLflow key as a Trainyard metric name (``val acc`` -> ``val_acc``)."""
    name = _INVALID.sub("_", str(key))[:64]
    return name if name[:1].isalpha() or name[:1] == "_" else ("_" + name)[:64]


def _forward(step: Any, values: dict[str, float]) -> None:
    try:
        import trainyard

        trainyard.report(int(step or 0), **{_metric_name(k): float(v) for k, v in values.items()})
    except Exception:  # MLflow's logging must never fail because of Trainyard
        pass


def _patch(module: Any) -> None:
    client = getattr(module, "MlflowClient", None)
    if client is None or getattr(client, "_trainyard_forwarding", False):
        return
    log_metric, log_batch = client.log_metric, client.log_batch

    def forwarding_log_metric(
        self: Any, run_id: str, key: str, value: float, *args: Any, **kwargs: Any
    ) -> Any:
        result = log_metric(self, run_id, key, value, *args, **kwargs)
        step = kwargs.get("step", args[1] if len(args) > 1 else None)
        _forward(step, {key: value})
        return result

    def forwarding_log_batch(self: Any, run_id: str, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        result = log_batch(self, run_id, metrics, *args, **kwargs)
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics or ():
            by_step.setdefault(metric.step or 0, {})[metric.key] = metric.value
        for step, values in sorted(by_step.items()):
            _forward(step, values)
        return result

    client.log_metric, client.log_batch = forwarding_log_metric, forwarding_log_batch
    client._trainyard_forwarding = True


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        try:
            _patch(module)
        except Exception:
            pass


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of MLflow's client module, found by the finders after this one."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def _chain() -> None:
    """Run the sitecustomize this file shadows (the next one on sys.path), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_IN_A_JOB = os.environ.get("TRAINYARD_METRICS_FILE") or os.environ.get("TRAINYARD_METRICS_STREAM") == "stderr"
if _IN_A_JOB and os.environ.get("TRAINYARD_MLFLOW_METRICS", "1") != "0":
    sys.meta_path.insert(0, _Finder())
_chain()
