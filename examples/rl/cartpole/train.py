"""A DQN on CartPole with TF-Agents (TensorFlow 2.15, tf-keras 2.15): the issue's heavier RL example.

    python examples/rl/cartpole/train.py --learning-rate 1e-3 --width 100 --steps 3000 \
        [--eval-interval 500] [--eval-episodes 5] [--seed 0]

Collects with the agent's epsilon-greedy policy into a replay buffer and trains on batches of 64;
every ``eval-interval`` steps it reports the greedy policy's average return with
``trainyard.report(step, average_return=...)`` (what a sweep's pruner reads). At the end it saves
the policy (TF-Agents' PolicySaver, a SavedModel) and ``metrics.json`` into
``$TRAINYARD_OUTPUT_DIR`` (the registry registers it as a version of ``cartpole-dqn``) and, when
``MLFLOW_TRACKING_URI`` is set and MLflow importable, logs params and the returns to an MLflow run.

Its environment is the job's ``runtime_env`` (job.yaml): tf-agents 0.19.0 needs Python <= 3.11,
tensorflow-cpu 2.15.1 and tf-keras 2.15.1, with ``TF_USE_LEGACY_KERAS=1`` (about 1.9 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-agents 0.19 is written against Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:  # inside a Trainyard job the executor puts the reporter on the path; elsewhere: no-op
    import trainyard
except ImportError:  # pragma: no cover - run by hand without it
    trainyard = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DQN on CartPole (TF-Agents).")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=100, help="units of the Q-network's hidden layer")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--eval-interval", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.learning_rate > 0 or args.width < 1 or args.steps < 1 or args.eval_interval < 1:
        parser.error("need learning-rate > 0, width >= 1, steps >= 1, eval-interval >= 1")
    return args


def average_return(env: Any, policy: Any, episodes: int) -> float:
    total = 0.0
    for _ in range(episodes):
        time_step = env.reset()
        episode = 0.0
        while not time_step.is_last():
            time_step = env.step(policy.action(time_step).action)
            episode += float(time_step.reward.numpy()[0])
        total += episode
    return total / episodes


def train(args: argparse.Namespace, output_dir: Path) -> tuple[list[tuple[int, float]], dict[str, float]]:
    import tensorflow as tf
    from tf_agents.agents.dqn import dqn_agent
    from tf_agents.environments import suite_gym, tf_py_environment
    from tf_agents.networks import sequential
    from tf_agents.policies import policy_saver, random_tf_policy
    from tf_agents.replay_buffers import tf_uniform_replay_buffer
    from tf_agents.trajectories import trajectory
    from tf_agents.utils import common

    tf.random.set_seed(args.seed)
    train_env = tf_py_environment.TFPyEnvironment(suite_gym.load("CartPole-v0"))
    eval_env = tf_py_environment.TFPyEnvironment(suite_gym.load("CartPole-v0"))
    actions = int(train_env.action_spec().maximum - train_env.action_spec().minimum + 1)
    q_net = sequential.Sequential(
        [
            tf.keras.layers.Dense(args.width, activation="relu"),
            tf.keras.layers.Dense(
                actions,
                kernel_initializer=tf.keras.initializers.RandomUniform(minval=-0.03, maxval=0.03),
                bias_initializer=tf.keras.initializers.Constant(-0.2),
            ),
        ]
    )
    agent = dqn_agent.DqnAgent(
        train_env.time_step_spec(),
        train_env.action_spec(),
        q_network=q_net,
        optimizer=tf.keras.optimizers.Adam(learning_rate=args.learning_rate),
        td_errors_loss_fn=common.element_wise_squared_loss,
        train_step_counter=tf.Variable(0),
    )
    agent.initialize()
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        data_spec=agent.collect_data_spec, batch_size=train_env.batch_size, max_length=100_000
    )

    def collect(policy: Any) -> None:
        time_step = train_env.current_time_step()
        action = policy.action(time_step)
        buffer.add_batch(trajectory.from_transition(time_step, action, train_env.step(action.action)))

    random_policy = random_tf_policy.RandomTFPolicy(train_env.time_step_spec(), train_env.action_spec())
    train_env.reset()
    for _ in range(100):
        collect(random_policy)
    batches = iter(buffer.as_dataset(num_parallel_calls=2, sample_batch_size=64, num_steps=2).prefetch(2))
    agent.train = common.function(agent.train)

    started = time.monotonic()
    history: list[tuple[int, float]] = []
    for step in range(1, args.steps + 1):
        collect(agent.collect_policy)
        experience, _ = next(batches)
        loss = float(agent.train(experience).loss)
        if step % args.eval_interval == 0 or step == args.steps:
            value = average_return(eval_env, agent.policy, args.eval_episodes)
            history.append((step, value))
            if trainyard is not None:
                trainyard.report(step, average_return=value, loss=loss)
            print(f"step {step}/{args.steps} average return {value:.1f} loss {loss:.3f}", flush=True)
    metrics = {"average_return": history[-1][1], "train_seconds": round(time.monotonic() - started, 3)}
    output_dir.mkdir(parents=True, exist_ok=True)
    policy_saver.PolicySaver(agent.policy).save(str(output_dir / "policy"))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"saved the policy and metrics.json to {output_dir}", flush=True)
    return history, metrics


def log_to_mlflow(
    args: argparse.Namespace, history: list[tuple[int, float]], metrics: dict[str, float]
) -> None:
    try:
        import mlflow
    except ImportError:
        print("mlflow: not installed here, not logging a run", flush=True)
        return
    with mlflow.start_run() as run:
        mlflow.log_params(dict(vars(args)))
        for step, value in history:  # the same names and steps as the reports
            mlflow.log_metric("average_return", value, step=step)
        mlflow.log_metric("train_seconds", metrics["train_seconds"], step=args.steps)
        print(f"mlflow: logged run {run.info.run_id} to {mlflow.get_tracking_uri()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    history, metrics = train(args, Path(os.environ.get("TRAINYARD_OUTPUT_DIR") or "outputs"))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        log_to_mlflow(args, history, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
