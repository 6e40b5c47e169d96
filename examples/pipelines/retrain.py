"""The retrain pipeline's steps (examples/pipelines/retrain.yaml), handing data and models on as
folders: each writes into ``$TRAINYARD_OUTPUT_DIR`` and reads its dependencies' folders under
``$TRAINYARD_INPUTS/<step>/`` (an array step's under ``<step>/<index>/``; docs/workflows.md,
"Step inputs"). Small values (the seed, the best C) travel as ``outputs.json``.

    retrain.py prepare --seed 0 --test-size 0.25     # split/train.npz, split/test.npz
    retrain.py train --c-values 0.001,0.1,10          # index $TRAINYARD_ARRAY_INDEX: model.pkl
    retrain.py evaluate                               # every train/<i>/model.pkl on the test split
    retrain.py register --C 0.1                       # evaluate's model.pkl, its metrics.json

Outside a pipeline the folders default to ``./outputs`` and ``./inputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

SPLIT = "split"


def output_dir() -> Path:
    folder = Path(os.environ.get("TRAINYARD_OUTPUT_DIR") or "outputs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def input_dir(step: str) -> Path:
    """A dependency's folder; a clear exit when it is not there (it failed, or packed nothing)."""
    folder = Path(os.environ.get("TRAINYARD_INPUTS") or "inputs") / step
    if not folder.is_dir():
        sys.exit(f"no folder from step {step!r} under $TRAINYARD_INPUTS ({folder})")
    return folder


def write_outputs(outputs: dict[str, object], metrics: dict[str, float] | None = None) -> None:
    folder = output_dir()
    (folder / "outputs.json").write_text(json.dumps(outputs) + "\n", encoding="utf-8")
    if metrics is not None:  # what the registry records with a version
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"outputs: {json.dumps(outputs)}", flush=True)


def load_split(part: str) -> tuple[Any, Any]:
    import numpy as np

    with np.load(input_dir("prepare") / SPLIT / f"{part}.npz") as data:
        return data["x"], data["y"]


def prepare(args: argparse.Namespace) -> None:
    """The split every later step uses, as files (scikit-learn's bundled digits, no download)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < args.test_size < 1:
        sys.exit(f"--test-size must be between 0 and 1, got {args.test_size}")
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=args.test_size, random_state=args.seed, stratify=y
    )
    folder = output_dir() / SPLIT
    folder.mkdir(exist_ok=True)
    np.savez_compressed(folder / "train.npz", x=x_train, y=y_train)
    np.savez_compressed(folder / "test.npz", x=x_test, y=y_test)
    print(f"data: {len(x_train)} train / {len(x_test)} test samples into {folder}", flush=True)
    write_outputs({"seed": args.seed, "test_size": args.test_size, "dataset": "sklearn-digits"})


def score(model: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    x_test, y_test = load_split("test")
    predicted = model.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }


def train(args: argparse.Namespace) -> None:
    """One candidate: the C of this array index, fitted on prepare's training split."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    index = int(os.environ.get("TRAINYARD_ARRAY_INDEX", "0"))
    if not 0 <= index < len(args.c_values):
        sys.exit(f"array index {index} has no C in --c-values {args.c_values}")
    c = args.c_values[index]
    x_train, y_train = load_split("train")
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=args.max_iter, random_state=args.seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an underfitting C is a candidate too
        model.fit(x_train, y_train)
    with open(output_dir() / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    metrics = score(model)
    print(f"index {index}: C={c:g} accuracy {metrics['accuracy']:.4f}", flush=True)
    write_outputs({"C": c, **metrics}, metrics)


def evaluate(args: argparse.Namespace) -> None:
    """Every candidate's model, scored again on the held-out split; the best is this step's."""
    candidates = []
    for folder in sorted(input_dir("train").iterdir(), key=lambda p: int(p.name)):
        with open(folder / "model.pkl", "rb") as f:  # our own step's file, from our own run
            model = pickle.load(f)
        c = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))["C"]
        accuracy = score(model)["accuracy"]
        print(f"candidate {folder.name}: C={c:g} accuracy {accuracy:.4f}", flush=True)
        candidates.append((accuracy, -c, folder))
    if args.reported is not None:  # the same figures as the array's outputs, one JSON list
        print(f"the train step reported: {args.reported}", flush=True)
    best_accuracy, minus_c, best = max(candidates)
    shutil.copyfile(best / "model.pkl", output_dir() / "model.pkl")
    print(f"best: C={-minus_c:g} (accuracy {best_accuracy:.4f}), index {best.name}", flush=True)
    write_outputs({"best_c": -minus_c, "best_accuracy": best_accuracy, "best_index": int(best.name)})


def register(args: argparse.Namespace) -> None:
    """The chosen model as this job's outputs: the registry makes it a version (model.pkl and
    metrics.json of the job's outputs folder)."""
    source = input_dir("evaluate") / "model.pkl"
    with open(source, "rb") as f:
        model = pickle.load(f)
    metrics = score(model)
    shutil.copyfile(source, output_dir() / "model.pkl")
    record_split()
    write_outputs({"C": args.C, **metrics}, metrics)


def record_split() -> None:
    """The data this version was trained and scored on (prepare's split, by content), in its
    lineage: the in-job helper the executor puts on a job's PYTHONPATH; none outside a job."""
    try:
        import trainyard  # type: ignore[import-not-found]
    except ImportError:
        return
    digest = trainyard.dataset("digits-split", input_dir("prepare") / SPLIT, context="training")
    print(f"dataset: digits-split {digest}", flush=True)


def c_values(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every C must be positive, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("prepare", help="write the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.25)
    t = verbs.add_parser("train", help="fit this array index's C")
    t.add_argument("--c-values", type=c_values, required=True, help="C per array index, e.g. 0.001,0.1,10")
    t.add_argument("--max-iter", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    e = verbs.add_parser("evaluate", help="pick the best candidate model")
    e.add_argument("--reported", help="the train step's accuracies as it reported them (a JSON list)")
    r = verbs.add_parser("register", help="hand the chosen model to the registry")
    r.add_argument("--C", type=float, required=True)
    args = parser.parse_args(argv)
    {"prepare": prepare, "train": train, "evaluate": evaluate, "register": register}[args.verb](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
