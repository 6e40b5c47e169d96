"""The retrain pipeline's own steps (examples/pipelines/retrain.yaml); the standard library only.

    python examples/pipelines/retrain.py prepare --seed 0 --test-size 0.25
    python examples/pipelines/retrain.py evaluate --candidate 0.1=0.95 --candidate 10=0.97

``prepare`` decides the split every training step uses (scikit-learn's bundled digits: the seed
and the held-out fraction) and writes it to ``outputs.json``; ``evaluate`` picks the candidate
with the best accuracy (``C=accuracy``, from the training steps' outputs) and writes ``best_c``
and ``best_accuracy``. Later steps read them as ``${{ steps.<step>.outputs.<name> }}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_outputs(outputs: dict[str, object]) -> None:
    folder = Path(os.environ.get("TRAINYARD_OUTPUT_DIR") or "outputs")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "outputs.json").write_text(json.dumps(outputs) + "\n", encoding="utf-8")
    print(f"outputs: {json.dumps(outputs)}", flush=True)


def prepare(args: argparse.Namespace) -> None:
    if not 0 < args.test_size < 1:
        sys.exit(f"--test-size must be between 0 and 1, got {args.test_size}")
    write_outputs({"seed": args.seed, "test_size": args.test_size, "dataset": "sklearn-digits"})


def candidate(text: str) -> tuple[float, float]:
    c, equals, accuracy = text.partition("=")
    try:
        if not equals:
            raise ValueError
        return float(c), float(accuracy)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C=accuracy, got {text!r}") from None


def evaluate(args: argparse.Namespace) -> None:
    for c, accuracy in args.candidate:
        print(f"candidate C={c:g}: accuracy {accuracy:.4f}", flush=True)
    best_c, best_accuracy = max(args.candidate, key=lambda pair: (pair[1], -pair[0]))
    print(f"best: C={best_c:g} (accuracy {best_accuracy:.4f})", flush=True)
    write_outputs({"best_c": best_c, "best_accuracy": best_accuracy})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("prepare", help="decide the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.25)
    e = verbs.add_parser("evaluate", help="pick the best candidate")
    e.add_argument("--candidate", type=candidate, action="append", required=True, help="C=accuracy")
    args = parser.parse_args(argv)
    prepare(args) if args.verb == "prepare" else evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
