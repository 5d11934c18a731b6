"""One table of this machine's speed: matmul peak, MoE layer, pretraining, sampler, GRPO step.

    bash benchmarks/device_check.sh [--quick] [--out PATH]
    python benchmarks/device_check.py [--quick] [--out PATH]

Runs on whatever `jax.default_backend()` is (CPU, one GPU, a TPU host; everything runs on the
default device) and prints ONE markdown table, also written to --out (default
`$OUT/device_check.md` when $OUT is a directory, else `device_check.md`; both, and a relative
--out, in the directory device_check.sh was called from). Shapes: full sizes on accelerators,
smaller ones on CPU (both well under 5 minutes), tiny ones with --quick (under a minute on 2
cores; what tests/test_device_check.py runs).

Rows (each timing the median of a few repetitions after a warm-up call, compilation excluded,
`jax.block_until_ready` on the outputs):
- backend, device kind and count, jax version;
- matmul peak: an n x n x n `jnp.matmul` in float32 (timed before and after the other rows; the
  higher median is the peak, as machine load varies), and in bfloat16 on accelerators;
- MoE layer forward+backward (benchmarks/moe_layer.py's layer: router, shared expert, routed
  experts) for each `model.moe_impl` (sparse dispatch, dense oracle, ragged_dot) against a dense
  SwiGLU FFN of the same activated FLOPs; on CPU ragged_dot runs only at the --quick size
  (XLA:CPU runs it ~100x slower than a matmul of the same FLOPs), with its own bound;
- pretraining step (benchmarks/mfu.py's step: `lm.make_train_step`, AdamW) with the model's
  'auto' choices of this backend (dtype / moe_impl / attention_impl, in the shape column):
  tokens/s and MFU against the matmul peak of its dtype measured in the same run (float32 on
  CPU, bfloat16 on accelerators; model FLOPs from `moe_rl.models.counting.flops_per_token`,
  MTP not counted: a lower bound);
- sampler (`moe_rl.sampling.generate`, KV cache, greedy) tokens/s at batch 64;
- one GRPO step (benchmarks/grpo_step.py) split into rollout / reference / train seconds.
The last column is peak memory: on GPU/TPU the default device's `memory_stats()`
peak_bytes_in_use, on CPU the process's max RSS (`getrusage`); both are the peak of the
process so far (neither can be reset), so a row's value includes every row above it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_rl import sampling

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_step  # noqa: E402  (benchmarks/grpo_step.py)
import mfu  # noqa: E402  (benchmarks/mfu.py)
import moe_layer  # noqa: E402  (benchmarks/moe_layer.py)
from sampling import EOS, PAD, timed  # noqa: E402  (benchmarks/sampling.py)

from moe_rl.models import transformer  # noqa: E402
from moe_rl.models.config import ModelConfig, preset  # noqa: E402

ROWS = (
    "backend",
    "device",
    "jax version",
    "matmul float32",
    "matmul bfloat16",
    "MoE fwd+bwd, sparse dispatch",
    "MoE fwd+bwd, dense oracle",
    "MoE fwd+bwd, ragged_dot",
    "MoE fwd+bwd, dense FFN bound",
    "pretraining step",
    "sampler, batch 64",
    "GRPO step, rollout",
    "GRPO step, reference",
    "GRPO step, train",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    matmul: int
    repeats: int
    moe: tuple[int, int, int, int, int]  # tokens, hidden, expert width, experts, top-k
    pretrain: tuple[str, int, int]  # preset, batch, seq len
    sample: tuple[str, int, int]  # preset, prompt, new tokens (batch 64)
    grpo: tuple[str, int, int, int, int]  # preset, prompts, completions, new tokens, prompt
    overrides: tuple[tuple[str, int], ...] = ()  # model fields changed in every preset


QUICK = Sizes(
    matmul=256,
    repeats=3,
    moe=(256, 64, 32, 8, 2),
    pretrain=("tiny", 4, 64),
    sample=("tiny", 16, 16),
    grpo=("tiny", 2, 2, 8, 16),
    overrides=(("num_nextn_predict_layers", 0),),  # the MTP module triples the compile time
)
CPU = Sizes(
    matmul=1024,
    repeats=3,
    moe=(2048, 256, 64, 16, 4),
    pretrain=("small", 16, 256),  # benchmarks/mfu.py's shape
    sample=("small", 64, 32),
    grpo=("small", 8, 4, 32, 64),  # benchmarks/grpo_step.py's shape
)
FULL = Sizes(
    matmul=8192,
    repeats=5,
    moe=(8192, 1024, 256, 64, 6),
    pretrain=("small", 16, 1024),
    sample=("small", 64, 128),
    grpo=("small", 16, 8, 64, 64),
)


def peak_memory() -> str:
    """The process's peak memory so far: device peak_bytes_in_use, else max RSS (CPU)."""
    stats = None
    if jax.default_backend() != "cpu":
        try:
            stats = jax.devices()[0].memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
    if stats and "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB (device peak)"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{rss_kib / 2**20:.2f} GiB (process max RSS)"


def median_seconds(fn, args, repeats: int) -> float:
    """Median wall seconds of fn(*args) after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_gflops(n: int, dtype, repeats: int) -> float:
    """GFLOP/s of a jit-compiled n x n x n matmul (median time)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return 2.0 * n**3 / median_seconds(jax.jit(jnp.matmul), (a, b), repeats) / 1e9


def moe_fwd_bwd_ms(moe, impls: list[str], repeats: int) -> dict[str, float]:
    """Median fwd+bwd ms of benchmarks/moe_layer.py's MoE layer for each impl and the bound."""
    T, D, F, E, K = moe
    kx, kp, kdy = jax.random.split(jax.random.key(0), 3)
    x_TD = jax.random.normal(kx, (T, D), jnp.float32)
    dy_TD = jax.random.normal(kdy, (T, D), jnp.float32)
    moe_p, bound_p = moe_layer.make_params(kp, D, F, E, K, 1)
    layers = {impl: (moe_layer.moe_layer(impl, K), moe_p) for impl in impls}
    layers["bound"] = (lambda p, x: moe_layer.swiglu(x, *p), bound_p)
    out = {}
    for name, (f, p) in layers.items():
        _, (fwd_bwd, args) = moe_layer.fwd_and_fwd_bwd(f, p, x_TD, dy_TD)
        out[name] = 1e3 * median_seconds(fwd_bwd, args, repeats)
    return out


def fmt(x: float) -> str:
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def run(sizes: Sizes, mode: str, sections: dict) -> list[tuple[str, str, str, str, str, str]]:
    """Rows (name, shape, value, unit, relative, peak memory); `sections` gets the
    perf_counter time at the end of each section (compilation included)."""
    backend = jax.default_backend()
    accel = backend != "cpu"
    dev = jax.devices()[0]
    rows = [
        ("backend", "", backend, "", f"mode {mode}", ""),
        ("device", "", dev.device_kind, "", f"count {jax.device_count()}", ""),
        ("jax version", "", jax.__version__, "", "", ""),
    ]
    R, n = sizes.repeats, sizes.matmul
    peak = 1e9 * matmul_gflops(n, jnp.float32, R)  # measured again after the steps, below
    rows.append(("matmul float32", f"{n}^3", "", "GFLOP/s", "", peak_memory()))
    if accel:
        bf16 = matmul_gflops(n, jnp.bfloat16, R)
        rows.append(
            (
                "matmul bfloat16",
                f"{n}^3",
                fmt(bf16),
                "GFLOP/s",
                f"{bf16 / (peak / 1e9):.2f}x float32",
                peak_memory(),
            )
        )
    else:
        reason = "skipped: CPU backend (the models run in float32 here; bfloat16 on GPU/TPU)"
        rows.append(("matmul bfloat16", "", reason, "", "", ""))

    sections["matmul"] = time.perf_counter()

    # MoE layer, fwd+bwd, against the dense FFN bound of the same activated FLOPs.
    T, D, F, E, K = sizes.moe
    names = {"sparse": "sparse dispatch", "dense": "dense oracle", "ragged": "ragged_dot"}
    impls = ["sparse", "dense"] + (["ragged"] if accel or sizes is QUICK else [])
    ms = moe_fwd_bwd_ms(sizes.moe, impls, R)
    shape = f"T={T} D={D} F={F} E={E} top-{K}+1"
    mem = peak_memory()
    for impl in impls:
        ratio = f"{ms[impl] / ms['bound']:.2f}x bound"
        rows.append((f"MoE fwd+bwd, {names[impl]}", shape, fmt(ms[impl]), "ms", ratio, mem))
    if "ragged" not in impls:  # CPU: ragged_dot only at the tiny size, against its own bound
        small = moe_fwd_bwd_ms(QUICK.moe, ["ragged"], R)
        t, d, f, e, k = QUICK.moe
        rows.append(
            (
                "MoE fwd+bwd, ragged_dot",
                f"T={t} D={d} F={f} E={e} top-{k}+1 (tiny: on XLA:CPU 20-130x the bound at 4096)",
                fmt(small["ragged"]),
                "ms",
                f"{small['ragged'] / small['bound']:.2f}x its bound ({fmt(small['bound'])} ms)",
                peak_memory(),
            )
        )
    rows.append(("MoE fwd+bwd, dense FFN bound", shape, fmt(ms["bound"]), "ms", "1.00x", mem))

    sections["MoE layer"] = time.perf_counter()

    # Pretraining step: tokens/s, MFU against its dtype's peak (filled in at the end).
    name, batch, seq = sizes.pretrain
    over = dict(sizes.overrides)
    note = " (no MTP)" if over.get("num_nextn_predict_layers") == 0 else ""
    pre = mfu.pretrain_step(name, batch, seq, R, **over)
    m = pre["cfg"]  # 'auto' resolved for this backend
    rows.append(
        (
            "pretraining step",
            f"{name}{note}, {batch} x {seq} tokens, {m.dtype} / {m.moe_impl} / {m.attention_impl}",
            fmt(batch * seq / pre["seconds"]),
            "tokens/s",
            "MFU {mfu:.1f}% of the " + f"{m.dtype} peak ({pre['seconds']:.3f} s/step)",
            peak_memory(),
        )
    )

    sections["pretraining"] = time.perf_counter()

    # Sampler: greedy, KV cache, batch 64, every row to the end (EOS never produced).
    name, plen, new = sizes.sample
    cfg = ModelConfig.from_config(preset(name, **over))
    params, state = transformer.init(cfg, jax.random.key(0))
    prompts = list(np.asarray(jax.random.randint(jax.random.key(1), (64, plen), 3, 259), np.int32))
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=new)
    seconds, out = timed(
        lambda: sampling.generate(
            cfg, params, state, prompts, jax.random.key(2), sp, eos_id=EOS, pad_id=PAD
        ),
        R,
    )
    generated = int(np.asarray(out.lengths).sum())
    rows.append(
        (
            "sampler, batch 64",
            f"{name}, prompt {plen}, {new} new tokens",
            fmt(generated / seconds),
            "tokens/s",
            f"{seconds:.3f} s per batch",
            peak_memory(),
        )
    )

    sections["sampler"] = time.perf_counter()

    # One GRPO step: rollout / reference / train seconds.
    name, Q, G, N, P = sizes.grpo
    ns = argparse.Namespace(prompts=Q, generations=G, new=N, prompt_len=P, steps=R)
    g = grpo_step.bench(name, ns, **over)
    shape = f"{name}, {Q} x {G} x {N} new tokens, prompt {P}"
    mem = peak_memory()
    for part in ("rollout", "reference", "train"):
        share = f"{100 * g[part] / g['total']:.0f}% of {g['total']:.3f} s step"
        rows.append((f"GRPO step, {part}", shape, fmt(g[part]), "s", share, mem))
    sections["GRPO"] = time.perf_counter()

    # The float32 peak again: on a shared machine the higher median of the two is the peak.
    after = 1e9 * matmul_gflops(n, jnp.float32, R)
    i = ROWS.index("matmul float32")
    note = f"higher median of 2 (before {fmt(peak / 1e9)}, after {fmt(after / 1e9)})"
    peak = max(peak, after)
    rows[i] = rows[i][:2] + (fmt(peak / 1e9), rows[i][3], note, rows[i][5])
    i = [r[0] for r in rows].index("pretraining step")
    pre_peak = 1e9 * bf16 if accel and m.dtype == "bfloat16" else peak
    mfu_pct = 100 * pre["flops"] / pre["seconds"] / pre_peak
    rows[i] = rows[i][:4] + (rows[i][4].format(mfu=mfu_pct), rows[i][5])
    sections["matmul again"] = time.perf_counter()
    return rows


def table(rows) -> str:
    lines = [
        "| check | shape | value | unit | relative | peak memory |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def out_path(out: str | None) -> str:
    """--out, relative to the directory device_check.sh was called from (else the working
    directory); default `$OUT/device_check.md` if $OUT is a directory, else device_check.md."""
    out_dir = os.environ.get("OUT", "")
    if out is None:
        out = os.path.join(out_dir, "device_check.md") if os.path.isdir(out_dir) else ""
    caller = os.environ.get("DEVICE_CHECK_CALLER_DIR", os.getcwd())
    return os.path.join(caller, out or "device_check.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (~1 min on 2 cores)")
    parser.add_argument("--out", default=None, help="markdown file (default: see above)")
    args = parser.parse_args(argv)
    accel = jax.default_backend() != "cpu"
    sizes, mode = (QUICK, "quick") if args.quick else (FULL, "full") if accel else (CPU, "cpu")
    sections = {"start": time.perf_counter()}
    text = table(run(sizes, mode, sections))
    ends = list(sections.values())
    spent = ", ".join(
        f"{name} {end - before:.0f} s"
        for name, end, before in zip(list(sections)[1:], ends[1:], ends[:-1], strict=True)
    )
    text += (
        f"\nMedians of {sizes.repeats} after a warm-up; {ends[-1] - ends[0]:.0f} s in all "
        f"(compilation included: {spent}).\n"
    )
    out = out_path(args.out)
    with open(out, "w") as f:
        f.write(text)
    print(text, end="")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
