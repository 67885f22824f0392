"""What a GRPO run records: ``metrics.jsonl``, ``samples.jsonl``, the reward curve, and the
first-fifth / last-fifth summaries of the training reward.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.io import save_figure
from mllm4d_lite.train.callbacks import append_jsonl_row, peak_memory_gb, trim_metrics

log = logging.getLogger(__name__)

# the name TRL logs each ST-reward term under (the reward function's __name__)
REWARD_METRIC = {"format": "format_reward", "accuracy": "accuracy_reward", "camera": "camera_reward",
                 "object": "object_reward"}


def metrics_row(step: int, logs: dict[str, float], reward_names: Sequence[str], s_per_step: float,
                device: str) -> dict[str, Any]:
    """One ``metrics.jsonl`` row from TRL's log dict (reward, components, length, KL, s/step, GB)."""
    row: dict[str, Any] = {"step": step, "reward": logs.get("reward"), "reward_std": logs.get("reward_std")}
    for name in reward_names:
        row[name] = logs.get(f"rewards/{REWARD_METRIC[name]}/mean")
    by_category = {k.split("/", 1)[1]: v for k, v in sorted(logs.items()) if k.startswith("accuracy/")}
    if by_category:
        row["accuracy_by_category"] = by_category
    row["completion_length"] = logs.get("completions/mean_length")
    row["kl"] = logs.get("kl")
    row["loss"] = logs.get("loss")
    row["entropy"] = logs.get("entropy")
    row["s_per_step"] = round(s_per_step, 4)  # wall clock, generation included
    row["memory_gb"] = round(peak_memory_gb(device), 3)  # peak CUDA allocation, or the process's peak RSS on CPU
    return row


def grpo_metrics_callback(out_dir: Path, reward_names: Sequence[str], max_steps: int, device: str):
    """The GRPO stage's ``TrainerCallback``: one ``metrics.jsonl`` row (:func:`metrics_row`) and one
    fixed-order log line per logging step."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Writes ``metrics.jsonl`` and logs one fixed-order line per logging step."""

        def __init__(self):
            self.path = out_dir / "metrics.jsonl"
            self._t_last = None
            self._step_last = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._t_last, self._step_last = time.perf_counter(), state.global_step
            trim_metrics(self.path, state.global_step)  # resuming: keep the rows up to the checkpoint

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            now = time.perf_counter()
            steps = max(1, state.global_step - self._step_last)
            s_per_step = (now - self._t_last) / steps
            self._t_last, self._step_last = now, state.global_step
            row = metrics_row(state.global_step, logs, reward_names, s_per_step, device)
            append_jsonl_row(self.path, row)
            comps = ", ".join(f"{n} {row[n]:.2f}" for n in reward_names if row.get(n) is not None)
            kl = row["kl"] if row["kl"] is not None else float("nan")
            log.info("step %d/%d | reward %.3f (%s) | len %.1f | kl %.4f | %.2f s/step | %.2f GB",
                     state.global_step, max_steps, row["reward"], comps, row["completion_length"] or 0.0,
                     kl, s_per_step, row["memory_gb"])

    return MetricsCallback()


def sample_writer(out_dir: Path, reward_names: Sequence[str], num_generations: int, fresh: bool):
    """A function that appends one prompt's completions and their reward terms to ``samples.jsonl``
    (:class:`~mllm4d_lite.train.grpo_trainer.VideoGRPOTrainer` calls it every ``sample_every`` steps)."""
    path = out_dir / "samples.jsonl"
    if fresh and path.exists():
        path.unlink()

    def write(step: int, inputs, completions: list[str], trainer_logs) -> None:
        n = min(num_generations, len(completions))
        rewards = {}
        for name in reward_names:
            values = list(trainer_logs["rewards"].get(REWARD_METRIC[name], []))[-len(completions):]
            rewards[name] = values[:n] if len(values) >= n else None
        row = {"step": step, "id": inputs[0].get("id"), "answer": inputs[0].get("answer"),
               "completions": completions[:n], "rewards": rewards}
        append_jsonl_row(path, row)

    return write


def fifth_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last fifth (at least one value each) of a series."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    k = max(1, len(vals) // 5)
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def category_fifths(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float | None, float | None]]:
    """Mean training accuracy per question category over the first and over the last fifth of the
    ``metrics.jsonl`` rows (a step logs only the categories it drew; ``None`` where a fifth drew none)."""
    k = max(1, len(rows) // 5)
    cats = sorted({c for r in rows for c in (r.get("accuracy_by_category") or {})})

    def mean(part: Sequence[dict[str, Any]], cat: str) -> float | None:
        vals = [r["accuracy_by_category"][cat] for r in part if cat in (r.get("accuracy_by_category") or {})]
        return sum(vals) / len(vals) if vals else None

    return {c: (mean(rows[:k], c), mean(rows[-k:], c)) for c in cats}


def fifths_see_same_prompts(steps: int, num_prompts: int, prompts_per_step: float) -> bool:
    """True when every fifth of a run is a whole number of passes over the same prompt pool.

    Only then does "last fifth minus first fifth" of the training reward compare like with like:
    over less than one pass each fifth draws different prompts, and the per-step reward follows
    which prompts were drawn as much as what the policy learnt.
    """
    if steps < 5 or steps % 5 or num_prompts < 1 or prompts_per_step <= 0:
        return False
    per_fifth = steps // 5 * prompts_per_step
    return per_fifth == int(per_fifth) and int(per_fifth) % num_prompts == 0


def plot_reward_curve(rows: Sequence[dict[str, Any]], reward_names: Sequence[str], path: str | Path) -> None:
    """Total reward and each (unweighted) component per step -> PNG."""
    from mllm4d_lite.io import pyplot

    plt = pyplot()

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["reward"] for r in rows], color="black", lw=2, label="total (weighted)")
    for name in reward_names:
        ax.plot(steps, [r.get(name) for r in rows], lw=1, alpha=0.8, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("GRPO reward")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=100)
