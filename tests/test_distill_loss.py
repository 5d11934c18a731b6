"""distill_loss (SFT, logit KD, GKD) against float64 loop references; distill_data's rejection
sampling selection and JSONL files."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from moe_rl.train import distill_data
from moe_rl.train import distill_loss as dl

B, L, V = 2, 3, 5
# Row 0: a prompt token, then two completion tokens; row 1: two completion tokens, then padding.
MASK_BL = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)  # float32 jax.grad vs float64 central differences


def f32(x):
    """Rounds to float32 and back, so that references see exactly what the jax code sees."""
    return np.asarray(x, np.float32).astype(np.float64)


def make_inputs(seed=0, scale=2.0):
    """float64 (float32-representable) student and teacher logits [B, L, V], targets [B, L]."""
    rng = np.random.default_rng(seed)
    student_BLV = f32(rng.normal(0.0, scale, (B, L, V)))
    teacher_BLV = f32(rng.normal(0.0, scale, (B, L, V)))
    targets_BL = rng.integers(0, V, (B, L))
    return student_BLV, teacher_BLV, targets_BL


def j(x):
    """float64 numpy -> float32 jax (ints stay int32)."""
    x = np.asarray(x)
    return jnp.asarray(x, jnp.int32 if x.dtype.kind == "i" else jnp.float32)


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def kl(p, q):
    return float(np.sum(p * np.log(p / q)))


def ref_tokens(mask_BL):
    return [
        (b, i) for b in range(mask_BL.shape[0]) for i in range(mask_BL.shape[1]) if mask_BL[b, i]
    ]


def ref_kd(student_BLV, teacher_BLV, targets_BL, mask_BL, temperature, ce_weight):
    """(loss, kl, ce) from probabilities, token by token, float64."""
    kls, ces = [], []
    for b, i in ref_tokens(mask_BL):
        p = softmax(teacher_BLV[b, i] / temperature)
        q = softmax(student_BLV[b, i] / temperature)
        kls.append(kl(p, q))
        ces.append(-np.log(softmax(student_BLV[b, i])[targets_BL[b, i]]))
    kl_mean, ce_mean = np.mean(kls), np.mean(ces)
    return temperature**2 * kl_mean + ce_weight * ce_mean, kl_mean, ce_mean


def ref_jsd(student_BLV, teacher_BLV, mask_BL, beta, temperature=1.0):
    """GKD's eq. 1 with the mixture built from probabilities, float64; TRL's endpoints."""
    out = []
    for b, i in ref_tokens(mask_BL):
        p = softmax(teacher_BLV[b, i] / temperature)
        q = softmax(student_BLV[b, i] / temperature)
        if beta == 0:
            out.append(kl(p, q))
        elif beta == 1:
            out.append(kl(q, p))
        else:
            m = beta * p + (1 - beta) * q
            out.append(beta * kl(p, m) + (1 - beta) * kl(q, m))
    return np.mean(out)


def fd_grad(f, x, eps=1e-6):
    """Central finite differences of scalar f at x, float64."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


# Every loss as f(student, teacher, targets, mask) -> scalar, for the padding and teacher tests.
LOSSES = {
    "sft": lambda s, t, y, m: dl.sft_loss(s, y, m)[0],
    "forward_kl": lambda s, t, y, m: dl.forward_kl(s, t, m, 2.0),
    "reverse_kl": lambda s, t, y, m: dl.reverse_kl(s, t, m, 0.5),
    "logit_kd": lambda s, t, y, m: dl.logit_kd_loss(s, t, y, m, 2.0, 0.3)[0],
    "gkd_0": lambda s, t, y, m: dl.generalized_jsd(s, t, m, 0.0, 1.5),
    "gkd_0.5": lambda s, t, y, m: dl.generalized_jsd(s, t, m, 0.5, 1.5),
    "gkd_1": lambda s, t, y, m: dl.generalized_jsd(s, t, m, 1.0, 1.5),
}


def test_sft_loss_matches_reference_and_ignores_prompt_tokens():
    student, _, targets = make_inputs(0)
    loss, metrics = dl.sft_loss(j(student), j(targets), j(MASK_BL))
    want = np.mean([-np.log(softmax(student[b, i])[targets[b, i]]) for b, i in ref_tokens(MASK_BL)])
    chex.assert_shape(loss, ())
    chex.assert_trees_all_close(loss, want, **VALUE_TOL)
    chex.assert_trees_all_close(metrics, {"ce": want, "tokens": 4.0}, **VALUE_TOL)

    # Another prompt token (row 0, position 0): new logits and a new target.
    student2, targets2 = student.copy(), targets.copy()
    student2[0, 0] = f32(np.random.default_rng(5).normal(0.0, 3.0, V))
    targets2[0, 0] = (targets[0, 0] + 1) % V
    loss2, _ = dl.sft_loss(j(student2), j(targets2), j(MASK_BL))
    chex.assert_trees_all_equal(loss2, loss)
    # A completion token does change it.
    targets2[0, 1] = (targets[0, 1] + 1) % V
    loss3, _ = dl.sft_loss(j(student2), j(targets2), j(MASK_BL))
    assert abs(float(loss3) - float(loss)) > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_is_zero_when_student_equals_teacher(temperature):
    _, teacher, targets = make_inputs(1)
    kd = lambda s: dl.logit_kd_loss(s, j(teacher), j(targets), j(MASK_BL), temperature)
    (loss, metrics), grad_BLV = jax.value_and_grad(kd, has_aux=True)(j(teacher))
    chex.assert_trees_all_equal(loss, jnp.float32(0.0))
    chex.assert_trees_all_equal(metrics["kl"], jnp.float32(0.0))
    assert float(metrics["ce"]) > 0.1  # the CE is computed, with weight 0
    chex.assert_trees_all_close(grad_BLV, jnp.zeros((B, L, V)), atol=1e-7)
    for beta in (0.0, 0.3, 1.0):
        jsd = dl.generalized_jsd(j(teacher), j(teacher), j(MASK_BL), beta, temperature)
        chex.assert_trees_all_close(jsd, 0.0, atol=1e-6)


def test_kd_loss_matches_hand_computed_value():
    """2x3x5, T = 2, ce_weight = 0.3: T^2 KL(P_T || Q_T) + 0.3 CE, means over 4 tokens."""
    student, teacher, targets = make_inputs(2)
    loss, metrics = dl.logit_kd_loss(
        j(student), j(teacher), j(targets), j(MASK_BL), temperature=2.0, ce_weight=0.3
    )
    want_loss, want_kl, want_ce = ref_kd(student, teacher, targets, MASK_BL, 2.0, 0.3)
    assert want_kl > 0.01 and want_ce > 0.1  # both terms matter
    chex.assert_trees_all_close(loss, want_loss, **VALUE_TOL)
    chex.assert_trees_all_close(metrics, {"kl": want_kl, "ce": want_ce, "tokens": 4.0}, **VALUE_TOL)
    # The T^2 factor: KD term alone is 4x the metric's KL.
    kd_only, _ = dl.logit_kd_loss(j(student), j(teacher), j(targets), j(MASK_BL), 2.0)
    chex.assert_trees_all_close(kd_only, 4.0 * want_kl, **VALUE_TOL)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_forward_and_reverse_kl_match_reference(temperature):
    student, teacher, _ = make_inputs(3)
    args = (j(student), j(teacher), j(MASK_BL), temperature)
    want_fwd = ref_jsd(student, teacher, MASK_BL, 0.0, temperature)
    want_rev = ref_jsd(student, teacher, MASK_BL, 1.0, temperature)
    assert abs(want_fwd - want_rev) > 1e-3  # the two directions differ here
    chex.assert_trees_all_close(dl.forward_kl(*args), want_fwd, **VALUE_TOL)
    chex.assert_trees_all_close(dl.reverse_kl(*args), want_rev, **VALUE_TOL)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gkd_endpoints_are_forward_and_reverse_kl(temperature):
    student, teacher, _ = make_inputs(4)
    s, t, m = j(student), j(teacher), j(MASK_BL)
    chex.assert_trees_all_equal(
        dl.generalized_jsd(s, t, m, 0.0, temperature), dl.forward_kl(s, t, m, temperature)
    )
    chex.assert_trees_all_equal(
        dl.generalized_jsd(s, t, m, 1.0, temperature), dl.reverse_kl(s, t, m, temperature)
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gkd_matches_jsd_formula(beta, temperature):
    student, teacher, _ = make_inputs(5)
    got = dl.generalized_jsd(j(student), j(teacher), j(MASK_BL), beta, temperature)
    want = ref_jsd(student, teacher, MASK_BL, beta, temperature)
    assert want > 1e-3
    chex.assert_trees_all_close(got, want, **VALUE_TOL)


def test_gkd_is_stable_for_extreme_logits():
    """Logits of +-80 at T = 0.5: probabilities underflow, log M must not."""
    student, teacher, _ = make_inputs(6)
    student[..., 0], teacher[..., 1] = 80.0, 80.0
    loss, grad = jax.value_and_grad(dl.generalized_jsd)(
        j(student), j(teacher), j(MASK_BL), 0.5, 0.5
    )
    chex.assert_tree_all_finite((loss, grad))
    assert float(loss) == pytest.approx(np.log(2.0), rel=1e-5)  # disjoint supports: JSD = ln 2


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_gkd_gradient_matches_finite_differences(beta):
    student, teacher, _ = make_inputs(7)
    temperature = 1.5
    got_s, got_t = jax.grad(dl.generalized_jsd, argnums=(0, 1))(
        j(student), j(teacher), j(MASK_BL), beta, temperature
    )
    want = fd_grad(lambda s: ref_jsd(s, teacher, MASK_BL, beta, temperature), student)
    assert np.abs(want).max() > 1e-2
    chex.assert_trees_all_close(got_s, want, **GRAD_TOL)
    chex.assert_trees_all_equal(got_t, jnp.zeros((B, L, V)))  # the teacher is a constant


def test_kd_gradient_matches_finite_differences():
    student, teacher, targets = make_inputs(8)
    kd = lambda s: dl.logit_kd_loss(s, j(teacher), j(targets), j(MASK_BL), 2.0, 0.3)[0]
    got = jax.grad(kd)(j(student))
    want = fd_grad(lambda s: ref_kd(s, teacher, targets, MASK_BL, 2.0, 0.3)[0], student)
    chex.assert_trees_all_close(got, want, **GRAD_TOL)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("scale", [1e4, 3e38])  # 3e38 / T overflows to inf for T < 1
def test_padding_values_do_not_matter(name, scale):
    """Garbage logits (however large) and out-of-range targets at masked-out positions change
    neither the loss nor the gradient, and get no gradient."""
    f = LOSSES[name]
    student, teacher, targets = make_inputs(9)
    grad_fn = jax.value_and_grad(f, argnums=(0, 1))
    loss, grads = grad_fn(j(student), j(teacher), j(targets), j(MASK_BL))
    rng = np.random.default_rng(10)
    pad = MASK_BL == 0
    student2, teacher2, targets2 = student.copy(), teacher.copy(), targets.copy()
    student2[pad] = f32(rng.uniform(-scale, scale, (pad.sum(), V)))
    teacher2[pad] = f32(rng.uniform(-scale, scale, (pad.sum(), V)))
    targets2[pad] = rng.choice([-3, V, V + 100], pad.sum())
    loss2, grads2 = grad_fn(j(student2), j(teacher2), j(targets2), j(MASK_BL))
    chex.assert_tree_all_finite((loss2, grads2))
    chex.assert_trees_all_close(loss2, loss, **VALUE_TOL)
    chex.assert_trees_all_close(grads2, grads, **VALUE_TOL)
    chex.assert_trees_all_equal(grads2[0][pad], jnp.zeros((pad.sum(), V)))
    chex.assert_trees_all_equal(grads2[1], jnp.zeros((B, L, V)))  # teacher: stop_gradient


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_masked_batch_is_zero_not_nan(name):
    student, teacher, targets = make_inputs(11)
    mask = jnp.zeros((B, L))
    loss, grad = jax.value_and_grad(LOSSES[name])(j(student), j(teacher), j(targets), mask)
    chex.assert_trees_all_equal((loss, grad), (jnp.float32(0.0), jnp.zeros((B, L, V))))


def test_bf16_inputs_use_float32_math():
    student, teacher, targets = make_inputs(12)
    s16, t16 = j(student).astype(jnp.bfloat16), j(teacher).astype(jnp.bfloat16)
    for name, f in LOSSES.items():
        got = f(s16, t16, j(targets), j(MASK_BL))
        chex.assert_type(got, jnp.float32)
        want = f(s16.astype(jnp.float32), t16.astype(jnp.float32), j(targets), j(MASK_BL))
        chex.assert_trees_all_close(got, want, **VALUE_TOL, custom_message=name)


def test_shapes_are_checked():
    student, teacher, targets = make_inputs(13)
    with pytest.raises(AssertionError):
        dl.forward_kl(j(student), j(teacher)[:, :, :-1], j(MASK_BL))
    with pytest.raises(AssertionError):
        dl.generalized_jsd(j(student), j(teacher), j(MASK_BL)[:, :-1], 0.5)
    with pytest.raises(AssertionError):
        dl.sft_loss(j(student), j(targets).astype(jnp.float32), j(MASK_BL))
    with pytest.raises(AssertionError):
        dl.sft_loss(j(student)[0], j(targets)[0], j(MASK_BL)[0])
    with pytest.raises(ValueError, match="beta"):
        dl.generalized_jsd(j(student), j(teacher), j(MASK_BL), 1.5)


@pytest.mark.parametrize(
    "key,value",
    [
        ("mode", "kd"),
        ("temperature", 0.0),
        ("temperature", float("nan")),
        ("temperature", "2"),
        ("ce_weight", -0.1),
        ("beta", 1.5),
        ("beta", -0.1),
        ("beta", True),
    ],
)
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"config\.distill\.{key}=.*; allowed: "):
        dl.DistillLossConfig(**{key: value})
    with pytest.raises(ValueError, match=rf"config\.distill\.{key}="):
        dl.DistillLossConfig.from_config(ml_collections.ConfigDict({key: value}))


def test_config_from_config_defaults_and_extra_keys():
    d = ml_collections.ConfigDict({"mode": "gkd", "beta": 0.3, "teacher_checkpoint": "/x"})
    c = dl.DistillLossConfig.from_config(d)
    assert c == dl.DistillLossConfig(mode="gkd", temperature=1.0, ce_weight=0.0, beta=0.3)
    hash(c)  # usable as a static jit argument


class DispatchTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dispatch_matches_the_named_loss(self):
        student, teacher, targets = make_inputs(14)
        s, t, y, m = j(student), j(teacher), j(targets), j(MASK_BL)
        cases = [
            (dl.DistillLossConfig(mode="sft"), dl.sft_loss(s, y, m)[0]),
            (
                dl.DistillLossConfig(mode="logit_kd", temperature=2.0, ce_weight=0.3),
                dl.logit_kd_loss(s, t, y, m, 2.0, 0.3)[0],
            ),
            (
                dl.DistillLossConfig(mode="gkd", temperature=1.5, ce_weight=0.2, beta=0.5),
                dl.generalized_jsd(s, t, m, 0.5, 1.5) + 0.2 * dl.sft_loss(s, y, m)[0],
            ),
        ]
        for c, want in cases:
            teacher_arg = None if c.mode == "sft" else t
            fn = self.variant(functools.partial(dl.distill_loss, c=c))
            loss, metrics = fn(s, teacher_arg, y, m)
            chex.assert_trees_all_close(loss, want, **VALUE_TOL)
            assert set(metrics) >= {"ce", "tokens"}


# ---------------------------------------------------------------- rejection sampling data

QUESTIONS = ["1+1", "2+2", "3+3"]
COMPLETIONS = [
    ["so 2", "long answer: 2", "so 2", "wrong 3", "2"],
    ["five", "5"],
    ["xx 6", "yy 6"],
]
CORRECT = [[1, 1, 1, 0, 1], [0, 0], [True, True]]
FORMATTED = [[1, 1, 1, 1, 0], [1, 1], [True, True]]


def test_select_answers_keeps_verified_deduplicated_answers():
    rows, stats = distill_data.select_answers(QUESTIONS, COMPLETIONS, CORRECT, FORMATTED, False)
    assert [(r["question"], r["completion"]) for r in rows] == [
        ("1+1", "so 2"),
        ("1+1", "long answer: 2"),
        ("3+3", "xx 6"),
        ("3+3", "yy 6"),
    ]
    assert rows[0]["num_chars"] == 4
    assert stats == {
        "questions": 3,
        "sampled": 9,
        "verified": 5,
        "duplicates": 1,
        "kept": 4,
        "acceptance_rate": 5 / 9,
        "questions_with_answer": 2,
        "shortest_only": False,
    }


def test_select_answers_shortest_only():
    """Shortest correct and formatted: not the shorter wrong one, nor the unformatted '2';
    by characters ('so 2'), by tokens when given ('long answer: 2'); ties go to the first."""
    rows, stats = distill_data.select_answers(QUESTIONS, COMPLETIONS, CORRECT, FORMATTED, True)
    assert [(r["question"], r["completion"]) for r in rows] == [("1+1", "so 2"), ("3+3", "xx 6")]
    assert (stats["kept"], stats["verified"], stats["questions_with_answer"]) == (2, 5, 2)
    tokens = [[5, 3, 5, 1, 1], [1, 1], [2, 2]]
    rows, _ = distill_data.select_answers(
        QUESTIONS, COMPLETIONS, CORRECT, FORMATTED, True, num_tokens=tokens
    )
    assert [(r["completion"], r["num_tokens"]) for r in rows] == [
        ("long answer: 2", 3),
        ("xx 6", 2),
    ]


def test_select_answers_validates_inputs():
    with pytest.raises(ValueError, match=r"len\(correct\)"):
        distill_data.select_answers(QUESTIONS, COMPLETIONS, CORRECT[:2], FORMATTED, False)
    with pytest.raises(ValueError, match=r"len\(formatted\[1\]\)"):
        distill_data.select_answers(
            QUESTIONS, COMPLETIONS, CORRECT, [FORMATTED[0], [1], FORMATTED[2]], False
        )
    with pytest.raises(ValueError, match=r"correct\[0\]\[1\]=0.5"):
        bad = [[1, 0.5, 1, 0, 1], CORRECT[1], CORRECT[2]]
        distill_data.select_answers(QUESTIONS, COMPLETIONS, bad, FORMATTED, False)
    rows, stats = distill_data.select_answers([], [], [], [], True)
    assert rows == [] and stats["acceptance_rate"] == 0.0


def test_jsonl_round_trip(tmp_path):
    rows = [
        {"question": "√4 = ?\nanswer:", "completion": "2 ✓\n", "num_chars": 4},
        {"question": 'say "hi"', "completion": "hi", "num_chars": 2, "num_tokens": 1},
    ]
    stats = {"questions": 2, "kept": 2, "acceptance_rate": 0.5}
    path = str(tmp_path / "new_dir" / "train.jsonl")
    written = distill_data.write_jsonl(path, rows, stats)
    assert written == str(tmp_path / "new_dir" / "train.stats.json")
    assert distill_data.read_jsonl(path) == rows
    with open(written) as f:
        assert json.load(f) == stats
    assert sorted(os.listdir(tmp_path / "new_dir")) == ["train.jsonl", "train.stats.json"]

    distill_data.write_jsonl(path, rows[:1], {"kept": 1})  # overwrite
    assert distill_data.read_jsonl(path) == rows[:1]


def test_jsonl_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "train.jsonl")
    distill_data.write_jsonl(path, [{"completion": "old"}], {"kept": 1})

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(distill_data.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        distill_data.write_jsonl(path, [{"completion": "new"}], {"kept": 1})
    monkeypatch.undo()
    assert distill_data.read_jsonl(path) == [{"completion": "old"}]
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl", "train.stats.json"]  # no temp files
