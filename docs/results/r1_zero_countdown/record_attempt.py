"""One Countdown attempt's record (attempts/pilot<N>.json) from its workdir.

    python docs/results/r1_zero_countdown/record_attempt.py <workdir> <N or name> "<what was tried>"

Reads what `python -m moe_rl.main --config=experiments/r1_zero_countdown.py --workdir=<workdir>`
wrote: summary.json (the held-out evaluations before and after GRPO, seconds per stage),
metrics.jsonl (every GRPO step's training-split metrics) and
the two evaluations' answers (search_stats.stats: tries, checks, step accuracy). Writes
attempts/pilot<N>.json (or attempts/<name>.json) beside this file: the same fields as the
earlier pilots'.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import search_stats  # noqa: E402  (beside this file)

STEP_KEYS = (
    "step",
    "sampled_accuracy",
    "accuracy",
    "format",
    "response_length",
    "truncated_rate",
    "zero_variance_groups",
    "refills",
    "questions_sampled",
    "rollout_seconds",
    "ref_seconds",
    "train_seconds",
    "step_seconds",
)


def record(workdir: str, pilot: str, what: str) -> dict:
    load = lambda name: json.load(open(os.path.join(workdir, name)))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f]
    steps = [{k: s[k] for k in STEP_KEYS if k in s} for s in steps if "reward" in s]
    sampled = [s.get("sampled_accuracy", s["accuracy"]) for s in steps]
    summary = load("summary.json")
    out = {
        "what": what,
        "before": summary["before"],
        "after": summary["after"],
        "minutes": {k: round(v / 60, 1) for k, v in summary["seconds"].items()},
        "heldout_search": {
            which: search_stats.stats(os.path.join(workdir, f"eval_{which}.jsonl"))
            for which in ("base", "policy")
        },
        "sampled_accuracy_by_10_steps": [
            round(float(np.mean(sampled[i : i + 10])), 4) for i in range(0, len(sampled), 10)
        ],
        "median_step_seconds": float(np.median([s["step_seconds"] for s in steps])),
        "grpo_steps_train_split": steps,
    }
    name = f"pilot{pilot}" if str(pilot).isdigit() else pilot
    path = os.path.join(HERE, "attempts", f"{name}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{path}: pass@1 {out['before']['pass@1']:.3f} -> {out['after']['pass@1']:.3f}")
    return out


if __name__ == "__main__":
    record(sys.argv[1], sys.argv[2], sys.argv[3])
