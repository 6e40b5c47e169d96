"""Render deploy/k8s kustomizations: ``kubectl kustomize`` when kubectl is installed, and always a
small pure-Python loader of the subset of kustomize those files use.

The loader knows ``resources`` (files and folders), ``configMapGenerator`` (files, literals) and
``secretGenerator`` (literals) with ``generatorOptions.disableNameSuffixHash: true``, and nothing
else: a kustomization that uses any other field is refused, so the loader can never silently render
something kustomize would render differently. Tests compare the two when kubectl is there.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator", "generatorOptions"}


class UnsupportedKustomization(ValueError):
    pass


def key_of(obj: Object) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _generated(root: Path, spec: dict[str, Any], kind: str) -> Object:
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, path = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        source = (root / path).resolve()
        if root.resolve() not in source.parents:
            raise UnsupportedKustomization(
                f"{root}: {path} is outside the kustomization (kustomize refuses it)"
            )
        data[key] = source.read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    unknown = set(spec) - {"name", "namespace", "files", "literals"}
    if unknown:
        raise UnsupportedKustomization(f"{root}: generator fields {sorted(unknown)} are not supported")
    metadata = {"name": spec["name"]}
    if spec.get("namespace"):
        metadata["namespace"] = spec["namespace"]
    obj: Object = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def render_python(root: Path) -> list[Object]:
    """Every object a kustomization folder builds, in kustomize's resource order."""
    path = root / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{path}: fields {sorted(unknown)} are not supported by this loader")
    generators = spec.get("configMapGenerator", []) + spec.get("secretGenerator", [])
    if generators and not (spec.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise UnsupportedKustomization(
            f"{path}: generators need generatorOptions.disableNameSuffixHash: true"
        )
    objects: list[Object] = []
    for resource in spec.get("resources", []):
        target = root / resource
        if target.is_dir():
            objects += render_python(target)
        else:
            objects += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    objects += [_generated(root, g, "ConfigMap") for g in spec.get("configMapGenerator", [])]
    objects += [_generated(root, g, "Secret") for g in spec.get("secretGenerator", [])]
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        if key_of(obj) in seen:
            raise UnsupportedKustomization(f"{root}: {key_of(obj)} is defined twice (kustomize refuses it)")
        seen.add(key_of(obj))
    return objects


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_kubectl(root: Path) -> list[Object]:
    binary = kubectl()
    assert binary, "kubectl is not installed"
    done = subprocess.run([binary, "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {root} failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
