"""The GRPO recipe end to end on the tiny model: masks, learning a trivial reward, exact resume."""

import json
import os
import runpy
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from moe_rl import checkpoint, evaluate, sampling, sweep
from moe_rl.data import tokenizers
from moe_rl.data.tasks import get_task
from moe_rl.models import transformer
from moe_rl.models.config import ModelConfig
from moe_rl.recipes import r1_zero
from moe_rl.train import grpo, grpo_step, loop, rollout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A workdir holding a freshly initialised tiny model as a checkpoint."""
    path = str(tmp_path_factory.mktemp("base"))
    config = small_config(path)
    model = evaluate.init_model(ModelConfig.from_config(config.model), 0)
    ckpt = checkpoint.Checkpointer(path, async_save=False)
    ckpt.save(1, {"step": np.int32(1), **model})
    ckpt.close()
    return path


def small_config(init_checkpoint: str, **flat):
    config = runpy.run_path(os.path.join(ROOT, "experiments/r1_zero.py"))["get_config"]()
    config.update_from_flattened_dict(
        {
            "init_checkpoint": init_checkpoint,
            "grpo.num_steps": 4,
            # Random models: every group is all wrong, so dynamic sampling (the default) would
            # only add refill rounds; test_every_variant_runs_together turns it on.
            "grpo.dynamic_sampling": False,
            "grpo.num_questions": 2,
            "grpo.num_generations": 4,
            "grpo.minibatch_size": 4,
            "grpo.num_iterations": 2,
            "grpo.checkpoint_every": 2,
            "grpo.samples_every": 2,
            "sampling.max_new_tokens": 8,
            "eval.num_questions": 2,
            "eval.num_samples": 2,
            "eval.batch_size": 4,
            "eval.sampling.max_new_tokens": 8,
            "task.options": "num_digits=2",
            **flat,
        }
    )
    return config


def digits(self, texts, examples, lengths):
    """A trivial verifiable reward: the fraction of the 8 answer bytes that are digits."""
    frac = np.array([sum(c.isdigit() for c in t) / 8 for t in texts], np.float32)
    zeros = np.zeros_like(frac)
    return {
        "accuracy": (frac > 0).astype(np.float32),
        "format": zeros,
        "overlong": zeros,
        "total": frac,
    }


def training_rows(workdir) -> list[dict]:
    """The GRPO steps' lines of metrics.jsonl, as written (the held-out results share the last step
    in a line of their own)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "reward" in r]


def test_rollout_masks_hold_the_first_eos_and_no_padding(base_dir):
    config = small_config(base_dir)
    cfg = ModelConfig.from_config(config.model)
    params, model_state = evaluate.init_model(cfg, 0).values()
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=8)
    task = get_task("arithmetic")

    def sample(eos_id):
        class Tok(tokenizers.ByteTokenizer):
            pass

        Tok.eos_id = eos_id
        roller = rollout.Roller(config, cfg, Tok(), task, sp)
        questions = rollout.QuestionStream(task, 0)
        return roller.rollout(params, model_state, questions, jax.random.key(1))

    # EOS = the token row 0 samples third, so that (same key, same tokens) it stops there.
    free = sample(263)
    tok = tokenizers.ByteTokenizer()
    tok.eos_id = int(free.tokens_QL[0, free.prompt_len + 2])
    ro = sample(tok.eos_id)
    P, N, G = ro.prompt_len, 8, 4
    assert ro.tokens_QL.shape == (2, P + G * N) and ro.mask_QGN.shape == (2, G, N)
    np.testing.assert_array_equal(ro.mask_QGN.sum(-1), ro.lengths_QG)
    stopped = ro.lengths_QG < N
    assert stopped.any(), "the test needs rows that stop early"
    completions = ro.tokens_QL[:, P:].reshape(2, G, N)
    for row, n in zip(completions[stopped], ro.lengths_QG[stopped], strict=True):
        assert row[n - 1] == tok.eos_id and tok.eos_id not in row[: n - 1]
        assert np.all(row[n:] == tok.pad_id)
    # Prompt padding is segment 0, the prompt 1, completion j segment j + 2 up to its end and
    # 0 after it (padding is not a token of the batch).
    want = np.where(ro.mask_QGN > 0, np.arange(2, G + 2)[None, :, None], 0).reshape(2, G * N)
    np.testing.assert_array_equal(ro.segment_ids_QL[:, P:], want)
    # The sampler's log-probs are the policy's: ratios start at 1.
    fresh = grpo_step.completion_logprobs(
        cfg, params, model_state, ro.tokens_QL, ro.segment_ids_QL, ro.positions_QL, P, G, 1.0
    )
    np.testing.assert_allclose(np.asarray(fresh) * ro.mask_QGN, ro.old_logp_QGN, atol=2e-5)


def test_shared_prefix_packing_equals_separate_rows(tiny):
    """Log-probs of G completions packed after one prompt equal those of G separate rows."""
    cfg, params, state = tiny
    rng = np.random.default_rng(0)
    Q, G, N, P = 2, 3, 5, 8
    prompt_len = np.array([8, 5])
    prompts = rng.integers(3, 259, (Q, P)).astype(np.int32)
    prompts[1, :3] = 0
    completions = rng.integers(3, 259, (Q, G, N)).astype(np.int32)
    tokens, seg, pos = rollout.pack_groups(prompts, prompt_len, completions)
    packed = grpo_step.completion_logprobs(cfg, params, state, tokens, seg, pos, P, G, 1.0)
    rows = np.concatenate([np.repeat(prompts, G, 0), completions.reshape(Q * G, N)], axis=1)
    rows_seg = np.concatenate(
        [np.repeat((prompts != 0).astype(np.int32), G, 0), np.ones((Q * G, N), np.int32)], axis=1
    )
    separate = sampling.full_forward_logprobs(cfg, params, state, rows, rows_seg)[:, P - 1 :]
    np.testing.assert_allclose(np.asarray(packed).reshape(Q * G, N), separate, atol=2e-5)

    # With the completions' lengths, the padding after each end leaves the batch: the real
    # tokens' log-probs are unchanged and the expert loads count exactly the real tokens.
    lengths = np.array([[5, 2, 3], [1, 4, 5]])
    t2, seg2, p2 = rollout.pack_groups(prompts, prompt_len, completions, lengths)
    np.testing.assert_array_equal(t2, tokens)
    np.testing.assert_array_equal(p2, pos)
    real = np.arange(N) < lengths[..., None]  # [Q, G, N]
    logits2, _, aux = grpo_step.completion_logits(cfg, params, state, t2, seg2, p2, P, G)
    logp2 = sampling.token_logprobs(logits2, t2[:, P:].reshape(Q, G, N), 1.0)
    np.testing.assert_allclose(np.asarray(logp2)[real], np.asarray(packed)[real], atol=1e-6)
    counted = np.asarray(aux["expert_counts"]).sum(-1)  # [n_moe_layers]
    np.testing.assert_array_equal(
        counted, cfg.num_experts_per_tok * (prompt_len.sum() + lengths.sum())
    )


@pytest.mark.parametrize("model", ["tiny", "tiny_dense"])
def test_prefix_attention_by_blocks_equals_the_masked_row(model, request):
    """transformer.forward with shared_prefix=(P, G) (attention by blocks) against the same
    row attended through the full mask (shared_prefix=True), MLA and GQA, random weights and
    tokens, completions of unequal lengths (padding after their ends): logits and the gradient
    of a loss over the real tokens."""
    cfg, params, state = request.getfixturevalue(model)
    assert cfg.attention == ("mla" if model == "tiny" else "gqa")
    rng = np.random.default_rng(1)
    Q, G, N, P = 2, 3, 6, 7
    prompts = rng.integers(3, 259, (Q, P)).astype(np.int32)
    prompts[0, :2] = 0
    prompt_len = np.array([5, 7])
    completions = rng.integers(3, 259, (Q, G, N)).astype(np.int32)
    lengths = np.array([[6, 2, 4], [1, 6, 3]])
    tokens, seg, pos = rollout.pack_groups(prompts, prompt_len, completions, lengths)
    real = np.asarray(seg > 0, np.float32)

    def loss(params, layout):
        logits, _, _ = transformer.forward(
            cfg, params, state, tokens, pos, seg, mtp=False, shared_prefix=layout
        )
        return (jax.nn.log_softmax(logits)[..., 5] * real).sum(), logits

    (l_full, logits_full), g_full = jax.value_and_grad(loss, has_aux=True)(params, True)
    (l_blocks, logits_blocks), g_blocks = jax.value_and_grad(loss, has_aux=True)(params, (P, G))
    np.testing.assert_allclose(
        np.asarray(logits_blocks)[real > 0], np.asarray(logits_full)[real > 0], atol=2e-5
    )
    np.testing.assert_allclose(l_blocks, l_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_blocks), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"prefix \(P=7, G=4\) does not lay out"):
        transformer.forward(cfg, params, state, tokens, pos, seg, mtp=False, shared_prefix=(P, 4))


def test_grpo_learns_a_trivial_reward(base_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rollout.Roller, "score", digits)
    config = small_config(
        base_dir,
        **{
            "grpo.num_steps": 12,
            "grpo.num_questions": 4,
            "grpo.minibatch_size": 16,
            "grpo.num_iterations": 1,
            "grpo.beta": 0.0,
            "grpo.checkpoint_every": 100,
            "optim.learning_rate": 1e-2,
        },
    )
    r1_zero.run(config, str(tmp_path))
    rows = training_rows(tmp_path)
    rewards = [r["reward"] for r in rows]
    assert len(rows) == 12
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.05, rewards  # ~0.05 -> ~0.15


def test_grpo_resumes_exactly(base_dir, tmp_path):
    config = small_config(base_dir)
    work = str(tmp_path / "run")
    r1_zero.run(config, work)
    ckpts = os.path.join(work, "grpo", "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["2", "4"]
    abstract = jax.eval_shape(lambda: evaluate.init_model(ModelConfig.from_config(config.model), 0))
    final = checkpoint.Checkpointer(os.path.join(work, "grpo")).restore_latest_model(abstract)[0]
    shutil.rmtree(os.path.join(ckpts, "4"))  # as if killed between step 2 and step 4
    r1_zero.run(config, work)
    resumed = checkpoint.Checkpointer(os.path.join(work, "grpo")).restore_latest_model(abstract)[0]
    jax.tree.map(np.testing.assert_array_equal, resumed, final)
    # A checkpoint of the GRPO loop before train_loop (extra {'grpo_step', 'questions'}, no
    # 'data') resumes at the same step and question.
    shutil.rmtree(os.path.join(ckpts, "4"))
    extra = os.path.join(ckpts, "2", "extra", "metadata")
    data = json.load(open(extra))["data"]
    json.dump({"grpo_step": 2, "questions": data["questions"]}, open(extra, "w"))
    r1_zero.run(config, work)
    old = checkpoint.Checkpointer(os.path.join(work, "grpo")).restore_latest_model(abstract)[0]
    jax.tree.map(np.testing.assert_array_equal, old, final)
    assert os.path.exists(os.path.join(work, "r1_zero.png"))
    summary = json.load(open(os.path.join(work, "summary.json")))
    assert set(summary["after"]) >= {"pass@1", "maj@2", "format_rate", "mean_length"}
    # The held-out results are metrics too (metrics.jsonl and TensorBoard), at the last step.
    last = [r for r in loop.read_metrics(work) if "eval_pass@1" in r]
    assert last and last[-1]["step"] == 4
    assert last[-1]["eval_pass@1"] == summary["after"]["pass@1"]
    assert last[-1]["eval_base_pass@1"] == summary["before"]["pass@1"]
    # Every held-out answer of both evaluations, one JSON line each, scored as in the summary.
    for name, metrics in (("eval_base.jsonl", "before"), ("eval_policy.jsonl", "after")):
        lines = [json.loads(line) for line in open(os.path.join(work, name))]
        assert len(lines) == config.eval.num_questions * config.eval.num_samples
        assert {"question", "reference", "response", "accuracy", "format"} <= set(lines[0])
        accuracy = np.mean([line["accuracy"] for line in lines])
        np.testing.assert_allclose(accuracy, summary[metrics]["pass@1"], atol=1e-6)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("grpo.num_generations", 1, "grpo.num_generations"),
        ("grpo.minibatch_size", 3, "grpo.minibatch_size"),
        ("grpo.advantage", "ppo", "grpo.advantage"),
        ("grpo.aggregation", "sum", "grpo.aggregation"),
        ("sampling.top_p", 0.0, "sampling.top_p"),
        ("task.template", "x", "task.template"),
        # The eval, optimizer and base-pretraining blocks, named by their full key.
        ("eval.batch_size", 0, r"eval\.batch_size=0"),
        ("eval.num_questions", 0, r"eval\.num_questions=0"),
        ("eval.num_samples", 0, r"eval\.num_samples=0"),
        ("eval.extract", "tagz", r"eval\.extract='tagz'; allowed"),
        ("eval.sampling.top_p", 0.0, r"eval\.sampling\.top_p"),
        ("optim.learning_rate", -1.0, r"optim\.learning_rate=-1"),
        ("pretrain.train.batch_size", 0, r"pretrain\.train\.batch_size=0"),
        ("pretrain.optim.warmup_steps", -1, r"pretrain\.optim\.warmup_steps=-1"),
        ("grpo.ratio", "sequence", r"ratio='sequence' \(GSPO\) with grpo.eps_low=0.2"),
        ("grpo.loss", "ppo", r"grpo\.loss='ppo'; allowed: \('grpo', 'cispo'\)"),
        ("grpo.old_logprobs", "x", r"grpo\.old_logprobs='x'; allowed: \('sampler', 'recompute'\)"),
        ("grpo.is_correction", "token_mask", r"set grpo\.old_logprobs='recompute'"),
        ("grpo.is_threshold", 0.5, r"grpo\.is_threshold=0.5 must be > 1"),
        ("grpo.off_policy_steps", 2, r"grpo\.off_policy_steps=2; allowed: \(0, 1\)"),
        ("grpo.refill", "half", r"grpo\.refill='half'; allowed: \('batch', 'missing'\)"),
    ],
)
def test_bad_config_fails_before_compiling(key, value, message):
    config = small_config("")
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
        grpo.validate_grpo_config(config)


def test_every_variant_runs_together(base_dir, tmp_path, monkeypatch):
    """DAPO dynamic sampling + overlong filter/penalty, GSPO ratio, k1-in-reward KL, RLOO,
    token-mean loss, clip-higher and MoE bias updates, in one short run."""
    monkeypatch.setattr(rollout.Roller, "score", digits)
    config = small_config(
        base_dir,
        **{
            "grpo.num_steps": 2,
            "grpo.dynamic_sampling": True,
            "grpo.max_refills": 1,
            "grpo.overlong_filter": True,
            "grpo.overlong_buffer": 4,
            "grpo.ratio": "sequence",
            "grpo.eps_low": 3e-4,  # GSPO's clip range for sequence ratios
            "grpo.eps_high": 4e-4,
            "grpo.kl": "k1_reward",
            "grpo.advantage": "rloo",
            "grpo.aggregation": "token_mean",
            "grpo.bias_update_rate": 1e-3,
        },
    )
    r1_zero.run(config, str(tmp_path))
    rows = training_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["refills"] <= 1 and r["questions_sampled"] in (2, 4)
        assert 0 <= r["sampled_accuracy"] <= 1
        if r["questions_sampled"] == 2:  # nothing dropped: the kept groups are all sampled
            assert r["sampled_accuracy"] == pytest.approx(r["accuracy"])
        assert all(np.isfinite(v) for v in r.values())
        assert "kl" not in r  # k1 goes into the reward, not the loss
    assert (tmp_path / "samples.txt").read_text().count("=== step 2") == 2
    cfg = ModelConfig.from_config(config.model)
    base = evaluate.init_model(cfg, 0)
    after = checkpoint.Checkpointer(str(tmp_path / "grpo")).restore_latest_model(
        jax.eval_shape(lambda: base)
    )[0]
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(), after["model_state"], base["model_state"]
    )
    assert max(jax.tree.leaves(moved)) > 0  # the balancing bias was updated during RL


def test_v32_cispo_and_mismatch_corrections_run_together(base_dir, tmp_path, monkeypatch):
    """CISPO with V3.2's unbiased KL and off-policy masking, pi_old recomputed by the trainer
    and token TIS, in one short run; at float32 the sampler and the trainer agree to ~1e-6."""
    monkeypatch.setattr(rollout.Roller, "score", digits)
    config = small_config(
        base_dir,
        **{
            "grpo.num_steps": 2,
            "grpo.loss": "cispo",
            "grpo.kl_unbiased": True,
            "grpo.off_policy_mask": True,
            "grpo.old_logprobs": "recompute",
            "grpo.is_correction": "token_truncate",
        },
    )
    r1_zero.run(config, str(tmp_path))
    rows = training_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(np.isfinite(v) for v in r.values())
        assert 0 <= r["mismatch_mean"] <= r["mismatch_max"] < 1e-4  # float32: ~1e-6
        assert r["is_corrected_fraction"] == 0 and r["is_weight_mean"] == pytest.approx(1, 1e-4)
        assert 0 <= r["off_policy_masked"] <= 1 and r["kl"] >= 0


def test_one_step_off_policy_samples_with_the_previous_weights_and_resumes_exactly(
    base_dir, tmp_path, monkeypatch
):
    """grpo.off_policy_steps=1: step n trains on rollouts sampled with the weights of step
    n-1's start (theta_0, theta_0, theta_1, theta_2: found by their fingerprints among every
    step's checkpoint), the versions are in the metrics, and a run killed after step 2
    samples steps 3 and 4 again with the same weights and ends at the same policy."""
    monkeypatch.setattr(rollout.Roller, "score", digits)
    sampled_with = []  # the sampling weights' fingerprint of each rollout, in order
    original = rollout.Roller.rollout

    def spy(self, params, model_state, questions, key):
        sampled_with.append(fingerprint({"params": params, "model_state": model_state}))
        return original(self, params, model_state, questions, key)

    monkeypatch.setattr(rollout.Roller, "rollout", spy)
    config = small_config(
        base_dir,
        **{
            "grpo.off_policy_steps": 1,
            "grpo.old_logprobs": "recompute",
            "grpo.is_correction": "token_truncate",
            "grpo.checkpoint_every": 1,
            "grpo.keep_checkpoints": 10,
        },
    )
    work = str(tmp_path / "run")
    r1_zero.run(config, work)
    cfg = ModelConfig.from_config(config.model)
    abstract = jax.eval_shape(lambda: evaluate.init_model(cfg, 0))
    ckpt = checkpoint.Checkpointer(os.path.join(work, "grpo"), read_only=True)
    theta = [checkpoint.Checkpointer(base_dir, read_only=True).restore_latest_model(abstract)[0]]
    theta += [ckpt.restore_model(n, abstract) for n in (1, 2, 3, 4)]
    prints = [fingerprint(t) for t in theta]
    assert len(set(prints)) == 5  # every update moved the weights
    assert sampled_with == [prints[0], prints[0], prints[1], prints[2]]
    rows = training_rows(work)
    assert [r["sampler_version"] for r in rows] == [0, 0, 1, 2]
    assert [r["policy_lag"] for r in rows] == [0, 1, 1, 1]
    # Step 1 samples with the weights it updates; later steps' pi_old (recomputed) is one
    # update ahead of the sampler, which TIS weighs.
    assert rows[0]["mismatch_max"] < 1e-4 < min(r["mismatch_max"] for r in rows[1:])
    for n in (3, 4):  # killed after step 2 (its rollout of step 3 in flight: lost)
        shutil.rmtree(os.path.join(work, "grpo", "checkpoints", str(n)))
    del sampled_with[:]
    r1_zero.run(config, work)
    assert sampled_with == [prints[1], prints[2]]
    final = checkpoint.Checkpointer(os.path.join(work, "grpo"), read_only=True).restore_model(
        4, abstract
    )
    jax.tree.map(np.testing.assert_array_equal, final, theta[4])


def fingerprint(model) -> float:
    """A number that changes whenever any weight does."""
    leaves = jax.tree.leaves(model)
    return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))


def test_a_missing_init_checkpoint_is_an_error_that_writes_nothing(tmp_path):
    missing = tmp_path / "no_such_base"
    config = small_config(str(missing))
    with pytest.raises(ValueError, match="config.init_checkpoint=.*no_such_base.* no readable"):
        r1_zero.base_model(config, ModelConfig.from_config(config.model), str(tmp_path / "run"))
    assert not missing.exists()


def test_countdown_experiment_is_r1_zero_with_its_own_task_corpus_and_lengths():
    load = lambda name: runpy.run_path(os.path.join(ROOT, "experiments", name))["get_config"]()
    countdown, r1_zero = load("r1_zero_countdown.py"), load("r1_zero.py")
    grpo.validate_grpo_config(countdown)
    a, b = _flatten(countdown.to_dict()), _flatten(r1_zero.to_dict())
    differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert differ <= {
        "name",
        "task.name",
        "task.options",
        "pretrain.data.mix",
        "pretrain.data.tokenizer",
        "model.vocab_size",
        "sampling.max_new_tokens",
        "eval.sampling.max_new_tokens",
        "grpo.num_steps",
        "grpo.refill",
        "pretrain.train.seq_len",
        "pretrain.train.batch_size",
    }, differ
    assert countdown.task.name == "countdown"
    assert countdown.pretrain.data.mix == "countdown_long"
    # the same tokens per pretraining step, in rows long enough for a whole search
    t, r = countdown.pretrain.train, r1_zero.pretrain.train
    assert t.seq_len * t.batch_size == r.seq_len * r.batch_size and t.seq_len == 512
    # the longest search the corpus writes, with the prompt, inside the rows' positions
    assert countdown.sampling.max_new_tokens + 128 <= t.seq_len


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("variant", ["plain", "replay"])
def test_bf16_experiment_is_r1_zero_in_bfloat16_from_the_same_seeds_base(variant):
    path = os.path.join(ROOT, "experiments", "r1_zero_bf16.py")
    bf16 = runpy.run_path(path)["get_config"](variant)
    r1 = runpy.run_path(os.path.join(ROOT, "experiments", "r1_zero.py"))["get_config"]()
    grpo.validate_grpo_config(bf16)
    a, b = _flatten(bf16.to_dict()), _flatten(r1.to_dict())
    differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    replay = {"grpo.routing_replay", "grpo.old_logprobs", "grpo.is_correction"}
    assert differ == {"name", "model.dtype", "init_checkpoint"} | (
        replay if variant == "replay" else set()
    )
    assert sweep.seed_config(bf16, 2).init_checkpoint == "runs/r1_zero/seed_2/base"
    with pytest.raises(ValueError, match=r"allowed variants: \('plain', 'replay'\)"):
        runpy.run_path(path)["get_config"]("fp8")


@pytest.mark.parametrize(
    "refill, missing, expected",
    [("batch", 1, 8), ("batch", 8, 8), ("missing", 1, 1), ("missing", 3, 4), ("missing", 5, 8)],
)
def test_refill_size(refill, missing, expected):
    assert rollout.refill_size(refill, 8, missing) == expected


@pytest.mark.parametrize("refill", ["batch", "missing"])
def test_refill_rounds_sample_what_the_option_says(refill):
    """Dynamic sampling with a fake sampler: the questions numbered 0 mod 3 get a zero-variance
    group; 'batch' refills whole batches, 'missing' only the missing groups (rounded up to a
    power of two); either way Q informative groups come out when enough were sampled, in the
    order sampled, and the question stream advanced by exactly what was sampled."""
    Q, G, N = 4, 2, 3
    tokenizer = tokenizers.get_tokenizer("byte")
    task = get_task("arithmetic")
    g = ml_collections.ConfigDict(
        dict(
            num_generations=G,
            num_questions=Q,
            dynamic_sampling=True,
            max_refills=3,
            refill=refill,
            overlong_filter=False,
            advantage="grpo",
            adv_eps=1e-4,
        )
    )
    roller = rollout.Roller.__new__(rollout.Roller)
    roller.g, roller.tokenizer = g, tokenizer
    counter = iter(range(1000))
    sizes = []

    def sample_groups(params, model_state, examples, key):
        n = len(examples)
        sizes.append(n)
        ids = [next(counter) for _ in range(n)]  # the questions' order in the stream
        tokens = np.ones((n, G, N), np.int32) * np.array(ids)[:, None, None]
        lengths = np.full((n, G), N, np.int32)
        return (
            [f"{i}" for i in ids for _ in range(G)],
            tokens,
            np.zeros((n, G, N), np.float32),
            lengths,
            np.ones((n, 2), np.int32),
            np.full((n,), 2, np.int32),
            {},
        )

    def score(texts, examples_S, lengths):
        ids = np.array([int(t) for t in texts])
        acc = np.where(ids % 3 == 0, 0.0, np.tile([0.0, 1.0], len(ids) // 2)).astype(np.float32)
        return {"accuracy": acc, "total": acc}

    roller.sample_groups, roller.score = sample_groups, score
    stream = rollout.QuestionStream(task, seed=0)
    out = roller.rollout(None, None, stream, jax.random.key(0))
    kept_ids = out.tokens_QL[:, 2]  # the first completion token of each group: its question
    if refill == "batch":
        assert sizes == [4, 4]  # questions 0-3 (0, 3 zero variance), then 4-7
    else:
        assert sizes == [4, 2]  # two groups missing: questions 4, 5
    assert list(kept_ids) == [1, 2, 4, 5]
    assert out.stats["questions_sampled"] == sum(sizes) == stream.position
    assert out.stats["refills"] == 1 and out.stats["zero_variance_groups"] == 0
