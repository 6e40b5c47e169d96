"""The cross-entropy method (CEM) on CartPole: a linear policy learned with gymnasium and numpy.

    python examples/rl/cem/train.py --population 32 --elite-frac 0.2 --init-std 1.0 --noise 0.1 \
        --iterations 15 [--episodes 1] [--seed 0]

Each iteration samples ``population`` policies (weights ~ N(mean, std)), runs each for
``episodes`` episodes, keeps the best ``elite-frac`` of them and refits mean and std to those (plus
``noise``, so the search does not collapse too early). It reports the population's mean return per
iteration with ``trainyard.report`` (live, and what a sweep's pruner reads), saves the final policy
(``policy.npz``: weights and bias) and ``metrics.json`` into ``$TRAINYARD_OUTPUT_DIR``, and, when
``MLFLOW_TRACKING_URI`` is set and MLflow importable, logs params and the per-iteration returns to
an MLflow run (the registry adopts it, as for examples/digits). CartPole-v1's best return is 500.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:  # inside a Trainyard job the executor puts the reporter on the path; elsewhere: no-op
    import trainyard
except ImportError:  # pragma: no cover - run by hand without it
    trainyard = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CEM on CartPole-v1 (gymnasium + numpy).")
    parser.add_argument("--population", type=int, default=32, help="policies sampled per iteration")
    parser.add_argument("--elite-frac", type=float, default=0.2, help="fraction kept to refit (0 < x <= 1)")
    parser.add_argument("--init-std", type=float, default=1.0, help="the first iteration's spread")
    parser.add_argument("--noise", type=float, default=0.1, help="added to the refitted std each iteration")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=1, help="episodes per policy evaluation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.population < 2 or not 0 < args.elite_frac <= 1 or args.iterations < 1 or args.episodes < 1:
        parser.error("need population >= 2, 0 < elite-frac <= 1, iterations >= 1, episodes >= 1")
    if args.init_std <= 0 or args.noise < 0:
        parser.error("need init-std > 0 and noise >= 0")
    return args


def episode_return(env: Any, params: Any, episodes: int, seed: int) -> float:
    """The mean return of the linear policy ``params`` (weights, then bias): push right when
    ``obs . w + b > 0``."""
    weights, bias = params[:-1], params[-1]
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(obs @ weights + bias > 0))
            total += float(reward)
            done = terminated or truncated
    return total / episodes


def train(args: argparse.Namespace) -> tuple[Any, list[float], dict[str, float]]:
    import gymnasium as gym
    import numpy as np

    rng = np.random.default_rng(args.seed)
    env = gym.make("CartPole-v1")
    size = env.observation_space.shape[0] + 1
    mean, std = np.zeros(size), np.full(size, args.init_std)
    elite = max(1, round(args.population * args.elite_frac))
    history: list[float] = []
    started = time.monotonic()
    for iteration in range(args.iterations):
        candidates = rng.normal(mean, std, size=(args.population, size))
        seed = args.seed * 100_000 + iteration * 1_000
        returns = np.array([episode_return(env, c, args.episodes, seed) for c in candidates])
        best = candidates[np.argsort(returns)[-elite:]]
        mean, std = best.mean(axis=0), best.std(axis=0) + args.noise
        history.append(float(returns.mean()))
        if trainyard is not None:
            trainyard.report(iteration, mean_return=history[-1], best_return=float(returns.max()))
        print(
            f"iteration {iteration + 1}/{args.iterations} mean return {returns.mean():.1f} "
            f"best {returns.max():.1f}",
            flush=True,
        )
    final = episode_return(env, mean, 5, seed=10_000_000)
    metrics = {
        "mean_return": history[-1],
        "final_return": final,
        "train_seconds": round(time.monotonic() - started, 3),
    }
    return mean, history, metrics


def save(policy: Any, metrics: dict[str, float], output_dir: Path) -> None:
    import numpy as np

    output_dir.mkdir(parents=True, exist_ok=True)
    np.savez(output_dir / "policy.npz", weights=policy[:-1], bias=policy[-1:])
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"saved policy.npz and metrics.json to {output_dir}", flush=True)


def log_to_mlflow(args: argparse.Namespace, history: list[float], metrics: dict[str, float]) -> None:
    try:
        import mlflow
    except ImportError:
        print("mlflow: not installed here, not logging a run", flush=True)
        return
    with mlflow.start_run() as run:
        mlflow.log_params(dict(vars(args)))
        # the same names and steps as the reports (the executor forwards MLflow's metrics to them)
        for iteration, value in enumerate(history):
            mlflow.log_metric("mean_return", value, step=iteration)
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "mean_return"}, step=len(history))
        print(f"mlflow: logged run {run.info.run_id} to {mlflow.get_tracking_uri()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policy, history, metrics = train(args)
    save(policy, metrics, Path(os.environ.get("TRAINYARD_OUTPUT_DIR") or "outputs"))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        log_to_mlflow(args, history, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
