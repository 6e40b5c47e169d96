"""Run one of dags/ with dag.test() in a process of its own (a test signals it, as Airflow's
supervisor signals a task it kills) and print its tasks' states as the last line (JSON)."""

from __future__ import annotations

import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag


def main() -> None:
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    run = bag.get_dag(sys.argv[1]).test()
    print(json.dumps({ti.task_id: str(ti.state) for ti in run.get_task_instances()}), flush=True)


if __name__ == "__main__":
    main()
