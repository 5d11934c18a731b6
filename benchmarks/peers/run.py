"""moe_rl against the tools people use today, on the same weights, alternating in one run.

    bash benchmarks/peers/run.sh              # creates the peers' environments, then this
    python benchmarks/peers/run.py --rounds 3 --steps 5 [--only grpo,generate,train]

moe_rl makes two tiny random models and exports them with `moe_rl.hf.save_pretrained`: a
DeepSeek-V3-style MoE (MLA, 8 routed experts top-2 + 1 shared; `DeepseekV3ForCausalLM`) and a
Qwen2-style dense GQA model (`Qwen2ForCausalLM`). Every peer loads those folders in its own
environment (benchmarks/peers/setup.sh) as a subprocess that prints JSON step times
(hf_worker.py: transformers + TRL on PyTorch CPU; tunix_worker.py: Tunix); moe_rl runs the
same weights in this process through its own functions (moe_rl.sampling.generate, the GRPO
step of benchmarks/grpo_step.py, moe_rl.train.lm.make_train_step). Each round runs every
peer and moe_rl back to back, the order flipped every round; each run's time is the median of
--steps steps after a warm-up (moe_rl compiles once, in its first round). A ratio is
peer / moe_rl within one round; the table shows the median over rounds. PyTorch runs with 1
and 2 threads in the first round and keeps the faster (oversubscribed cores punish its
spinning threads). Tables go to stdout and <workdir>/peers.md, raw times to peers.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from moe_rl import hf, perf, sampling
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig, preset
from moe_rl.train import configs, lm, train_state

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import grpo_step  # noqa: E402  (benchmarks/grpo_step.py)

PAD = 0
MODELS = {  # name -> (preset, overrides, Hugging Face architecture)
    "moe": ("tiny", dict(num_nextn_predict_layers=0), "DeepseekV3"),  # MTP: not in HF's model
    "dense": ("tiny_dense", dict(attention_bias=True), "Qwen2"),  # Qwen2 has q/k/v biases
}


def even_fraction(tokens_SN) -> np.ndarray:
    """The benchmark's reward, as in the workers: the fraction of even token ids."""
    return (np.asarray(tokens_SN) % 2 == 0).mean(-1)


class MoeRL:
    """moe_rl's side of each benchmark, on the exported weights; compiled functions are kept
    across rounds."""

    def __init__(self, cfgs: dict, weights: dict, args):
        self.cfgs, self.weights, self.args = cfgs, weights, args
        self._fns = {}

    def _cached(self, make, *key):
        """make(*key), compiled and warmed up once per key."""
        if key not in self._fns:
            self._fns[key] = make(*key)
        return self._fns[key]

    def _timed(self, fn, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return times

    def _generate_fn(self, model: str, batch: int, new: int):
        cfg = self.cfgs[model]
        params, state = self.weights[model]
        rng = np.random.default_rng(0)
        sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=new)  # greedy, as peers

        def run():
            prompts = rng.integers(3, 259, (batch, self.args.prompt_len)).tolist()
            out = sampling.generate(
                cfg, params, state, prompts, jax.random.key(0), sp, eos_id=-1, pad_id=PAD
            )  # eos -1: never stops early, exactly `new` tokens like the peers
            return out.tokens

        jax.block_until_ready(run())  # compile
        return run

    def generate(self, model: str, batch: int, new: int, steps: int) -> list[float]:
        return self._timed(self._cached(self._generate_fn, model, batch, new), steps)

    def _train_fn(self, model: str, batch: int, seq_len: int):
        cfg = self.cfgs[model]
        params, state = self.weights[model]
        t = configs.train(batch_size=batch, seq_len=seq_len)
        tx = train_state.make_optimizer(configs.optim(learning_rate=1e-4, warmup_steps=0), 1000)
        ts = train_state.TrainState(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=jax.tree.map(jax.numpy.copy, params),
            opt_state=tx.init(params),
            model_state=jax.tree.map(jax.numpy.copy, state),
            rng=jax.random.key(0),
        )
        step = jax.jit(
            lm.make_train_step(cfg, lm.LossConfig.from_config(t), tx, t.bias_update_rate),
            donate_argnums=0,
        )
        rng = np.random.default_rng(0)
        holder = {"state": ts}
        shape = (1, batch, seq_len)

        def run():
            data = {
                "tokens": rng.integers(3, 259, shape).astype(np.int32),
                "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape),
                "segment_ids": np.ones(shape, np.int32),
            }
            holder["state"], metrics = step(holder["state"], data)
            return metrics

        jax.block_until_ready(run())  # compile
        return run

    def train(self, model: str, batch: int, seq_len: int, steps: int) -> list[float]:
        return self._timed(self._cached(self._train_fn, model, batch, seq_len), steps)

    def _grpo_fn(self, model: str):
        a = self.args
        ns = argparse.Namespace(
            prompts=a.prompts, generations=a.generations, new=a.new, prompt_len=a.prompt_len
        )
        step = grpo_step.make_step(
            self.cfgs[model], *self.weights[model], ns, reward_fn=even_fraction, eos_id=-1
        )
        counter = iter(range(10**9))
        step(next(counter))  # compile
        return lambda: step(next(counter))["total"]

    def grpo(self, model: str, steps: int) -> list[float]:
        fn = self._cached(self._grpo_fn, model)
        return [fn() for _ in range(steps)]


def run_peer(cmd: list[str], log: str, attempts: int = 2) -> list[float]:
    """Runs a worker; its last stdout line is JSON with 'times'. stderr is appended to `log`.
    A crashed worker is run again once (PyTorch segfaulted now and then on the loaded machine)."""
    env = dict(
        os.environ,
        TRANSFORMERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        PYTHONWARNINGS="ignore",
        TOKENIZERS_PARALLELISM="false",
    )
    for attempt in range(attempts):
        with open(log, "a") as err:
            err.write(f"$ {' '.join(cmd)}\n")
            err.flush()
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode == 0 and lines:
            return json.loads(lines[-1])["times"]
        print(f"  worker failed (exit {out.returncode}), attempt {attempt + 1}; see {log}")
    raise RuntimeError(f"{' '.join(cmd)} failed {attempts} times; see {log}")


def benchmarks(args, venvs: str, folders: dict) -> list[dict]:
    """Each: a table row's labels, the peer's command (without --threads) and moe_rl's timer."""
    torch_py = os.path.join(venvs, "trl", "bin", "python")
    tunix_py = os.path.join(venvs, "tunix", "bin", "python")
    hf_worker, tunix_worker = (os.path.join(HERE, f) for f in ("hf_worker.py", "tunix_worker.py"))
    common = ["--warmup", "1", "--steps", str(args.steps)]
    grpo_shape = [
        "--prompts",
        str(args.prompts),
        "--generations",
        str(args.generations),
        "--new",
        str(args.new),
        "--prompt-len",
        str(args.prompt_len),
    ]
    rows = []
    if "grpo" in args.only:
        for model in ("moe", "dense"):
            rows.append(
                dict(
                    table="grpo",
                    what=f"GRPO step, {MODELS[model][2]}",
                    peer="TRL",
                    torch=True,
                    cmd=[
                        torch_py,
                        hf_worker,
                        "grpo",
                        "--model",
                        folders[model],
                        "--workdir",
                        args.workdir,
                        *grpo_shape,
                        *common,
                    ],
                    ours=lambda m=model: ("grpo", m),
                )
            )
        rows.append(
            dict(
                table="grpo",
                what="GRPO step, Qwen2",
                peer="Tunix",
                torch=False,
                cmd=[tunix_py, tunix_worker, "--model", folders["dense"], *grpo_shape, *common],
                ours=lambda: ("grpo", "dense"),
            )
        )
    if "generate" in args.only:
        for batch in (8, 64):
            for new in (32, 128):
                rows.append(
                    dict(
                        table="generate",
                        what=f"generate {batch} x {new} new tokens, DeepseekV3",
                        peer="transformers",
                        torch=True,
                        cmd=[
                            torch_py,
                            hf_worker,
                            "generate",
                            "--model",
                            folders["moe"],
                            "--batch",
                            str(batch),
                            "--new",
                            str(new),
                            "--prompt-len",
                            str(args.prompt_len),
                            *common,
                        ],
                        ours=lambda b=batch, n=new: ("generate", "moe", b, n),
                    )
                )
    if "train" in args.only:
        for model in ("moe", "dense"):
            rows.append(
                dict(
                    table="train",
                    what=f"LM train step 8 x 64, {MODELS[model][2]}",
                    peer="transformers + AdamW",
                    torch=True,
                    cmd=[
                        torch_py,
                        hf_worker,
                        "train",
                        "--model",
                        folders[model],
                        "--batch",
                        "8",
                        "--seq-len",
                        "64",
                        *common,
                    ],
                    ours=lambda m=model: ("train", m, 8, 64),
                )
            )
    return rows


def peer_times(r: dict, log: str) -> list[float]:
    """The peer's step times; PyTorch peers run with 1 and 2 threads the first time and keep
    the faster."""
    if not r["torch"]:
        return run_peer(r["cmd"], log)
    if "threads" not in r:
        by = {n: run_peer([*r["cmd"], "--threads", str(n)], log) for n in (1, 2)}
        r["threads"] = min(by, key=lambda n: np.median(by[n]))
        return by[r["threads"]]
    return run_peer([*r["cmd"], "--threads", str(r["threads"])], log)


def ours_times(moe_rl: MoeRL, spec: tuple, steps: int) -> list[float]:
    kind, *rest = spec
    return getattr(moe_rl, kind)(*rest, steps)


def table(rows: list[dict], kind: str, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| benchmark | peer | peer s | moe_rl s | speedup (peer / moe_rl) | per round |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["table"] != kind:
            continue
        peer = r["peer"] + (
            f" ({r['threads']} thread{'s' * (r['threads'] > 1)})" if r.get("threads") else ""
        )
        if not r["peer_medians"]:
            lines.append(f"| {r['what']} | {r['peer']} | failed | | | |")
            continue
        ratios = [p / o for p, o in zip(r["peer_medians"], r["ours_medians"], strict=True)]
        lines.append(
            f"| {r['what']} | {peer} | {np.median(r['peer_medians']):.3f} | "
            f"{np.median(r['ours_medians']):.3f} | {np.median(ratios):.1f}x | "
            + ", ".join(f"{x:.1f}" for x in ratios)
            + " |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venvs", default=os.path.join(HERE, ".venvs"))
    parser.add_argument("--workdir", default="/tmp/moe_rl_peers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--only", default="grpo,generate,train")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new", type=int, default=32, help="GRPO completion length")
    parser.add_argument("--prompt-len", type=int, default=64)
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    os.makedirs(os.path.join(args.workdir, "logs"), exist_ok=True)

    cfgs, weights, folders = {}, {}, {}
    for name, (base, overrides, _) in MODELS.items():
        cfgs[name] = ModelConfig.from_config(preset(base, **overrides))
        weights[name] = transformer.init(cfgs[name], jax.random.key(0))
        folders[name] = hf.save_pretrained(
            os.path.join(args.workdir, "hf", name), cfgs[name], *weights[name]
        )
    moe_rl = MoeRL(cfgs, weights, args)
    rows = benchmarks(args, args.venvs, folders)
    for r in rows:
        r.update(peer_medians=[], ours_medians=[], peer_times=[], ours_times=[])
    for rnd in range(args.rounds):
        for i, r in enumerate(rows):
            log = os.path.join(args.workdir, "logs", f"{r['table']}{i}_round{rnd}.log")

            peer = functools.partial(peer_times, r, log)
            ours = functools.partial(ours_times, moe_rl, r["ours"](), args.steps)
            first, second = (peer, ours) if rnd % 2 == 0 else (ours, peer)
            try:
                a, b = first(), second()
            except RuntimeError as e:  # a peer that keeps crashing loses its round, not the run
                print(f"round {rnd + 1}: {r['what']} ({r['peer']}) skipped: {e}", flush=True)
                continue
            p, o = (a, b) if rnd % 2 == 0 else (b, a)
            r["peer_times"].append(p)
            r["ours_times"].append(o)
            r["peer_medians"].append(float(np.median(p)))
            r["ours_medians"].append(float(np.median(o)))
            print(
                f"round {rnd + 1}/{args.rounds} {r['what']}: {r['peer']} "
                f"{np.median(p):.3f} s, moe_rl {np.median(o):.3f} s",
                flush=True,
            )

    head = (
        f"{perf.machine_description()}; load average {os.getloadavg()[0]:.1f}; float32; "
        f"{args.rounds} rounds x median of {args.steps} steps after warm-up; GRPO: "
        f"{args.prompts} prompts x {args.generations} completions x exactly {args.new} new "
        f"tokens, prompt {args.prompt_len} tokens, beta 0.04, one update per step"
    )
    titles = {
        "grpo": "GRPO step",
        "generate": "Generation (greedy, prompt 64 tokens)",
        "train": "One LM train step",
    }
    md = "\n\n".join([head] + [table(rows, k, t) for k, t in titles.items() if k in args.only])
    print("\n" + md)
    with open(os.path.join(args.workdir, "peers.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.workdir, "peers.json"), "w") as f:
        keep = ("table", "what", "peer", "threads", "peer_times", "ours_times")
        json.dump([{k: r[k] for k in keep if k in r} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
