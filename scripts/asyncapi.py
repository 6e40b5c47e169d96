"""Write one AsyncAPI document per service, generated from its faststream app (make asyncapi)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

SERVICES = ("scheduler", "executor", "registry", "telemetry")


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        app = importlib.import_module(f"trainyard_{service}.app").create_app()
        doc = app.schema.to_specification().to_jsonable()
        path = target / f"{service}.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(path)
    submission = importlib.import_module("trainyard_submission.app")
    doc = submission.build_asyncapi()
    path = target / "submission.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi"))
