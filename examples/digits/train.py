"""Train a classifier on scikit-learn's bundled digits data set (no download) and save it.

    python examples/digits/train.py --C 1.0 --max-iter 200 [--seed 0] [--model logistic-regression|svc]

Writes ``model.pkl``, ``metrics.json`` (flat name -> number) and ``outputs.json`` (accuracy,
f1_macro and C, for a pipeline's later steps) into ``$TRAINYARD_OUTPUT_DIR`` (default
``./outputs``). When ``MLFLOW_TRACKING_URI`` is set it also logs params and metrics to an MLflow
run; inside a Trainyard job that run carries the job's tags (``trainyard.job_id``, the git commit,
...) through the client's run-context provider, and the registry adopts it. Inside a job it also
records its input data set (scikit-learn's ``digits.csv.gz``, by content) with the in-job helper
``trainyard.dataset``: ``trainyard models lineage digits-classifier V`` lists it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("logistic-regression", "svc")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a digits classifier (scikit-learn).")
    parser.add_argument("--C", type=positive_float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--max-iter", type=positive_int, default=200, help="solver iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split and model")
    parser.add_argument("--model", choices=MODELS, default="logistic-regression")
    parser.add_argument(
        "--test-size", type=float, default=0.25, help="fraction held out for testing (0 < x < 1)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.test_size < 1:
        parser.error(f"--test-size must be between 0 and 1, got {args.test_size}")
    return args


def build_model(args: argparse.Namespace) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if args.model == "svc":
        estimator = SVC(C=args.C, max_iter=args.max_iter, random_state=args.seed)
    else:
        estimator = LogisticRegression(C=args.C, max_iter=args.max_iter, random_state=args.seed)
    return make_pipeline(StandardScaler(), estimator)


def train(args: argparse.Namespace, output_dir: Path) -> dict[str, float]:
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    started = time.monotonic()
    x, y = load_digits(return_X_y=True)
    record_dataset()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=args.test_size, random_state=args.seed, stratify=y
    )
    print(f"data: {len(x_train)} train / {len(x_test)} test samples, {x.shape[1]} features", flush=True)

    model = build_model(args)
    print(f"step 1/3 fit {args.model} C={args.C} max_iter={args.max_iter} seed={args.seed}", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print(f"warning: the solver did not converge in {args.max_iter} iterations", flush=True)

    train_accuracy = accuracy_score(y_train, model.predict(x_train))
    predicted = model.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
        "train_accuracy": float(train_accuracy),
        "train_seconds": round(time.monotonic() - started, 3),
    }
    print(
        f"step 2/3 eval accuracy={metrics['accuracy']:.4f} f1_macro={metrics['f1_macro']:.4f} "
        f"train_accuracy={metrics['train_accuracy']:.4f}",
        flush=True,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    # what a pipeline's later steps may use: ${{ steps.<this step>.outputs.accuracy }}
    outputs = {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"], "C": args.C}
    (output_dir / "outputs.json").write_text(json.dumps(outputs) + "\n", encoding="utf-8")
    print(f"step 3/3 saved model.pkl, metrics.json and outputs.json to {output_dir}", flush=True)
    return metrics


def record_dataset() -> None:
    """The data this version was trained on, in its lineage (the helper the executor puts on a
    job's PYTHONPATH; outside a job there is none, and nothing to record)."""
    try:
        import trainyard  # type: ignore[import-not-found]
    except ImportError:
        return
    import sklearn.datasets

    bundled = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    digest = trainyard.dataset("sklearn-digits", bundled, context="training")
    print(f"dataset: sklearn-digits {digest}", flush=True)


def log_to_mlflow(args: argparse.Namespace, metrics: dict[str, float]) -> None:
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_params({"C": args.C, "max_iter": args.max_iter, "seed": args.seed, "model": args.model})
        mlflow.log_metrics(metrics)
        print(f"mlflow: logged run {run.info.run_id} to {mlflow.get_tracking_uri()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(os.environ.get("TRAINYARD_OUTPUT_DIR") or "outputs")
    metrics = train(args, output_dir)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        log_to_mlflow(args, metrics)
    else:
        print("mlflow: MLFLOW_TRACKING_URI not set, not logging a run", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
