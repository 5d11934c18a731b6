"""optim.name='muon': optax's Muon on the weight matrices (2-D, or stacks of them: routed experts,
V4's output groups; but the embedding, the output head and V4's position biases), AdamW on
everything else, as DeepSeek-V4 trains; the config check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from moe_rl.models import transformer
from moe_rl.train import configs, lm, train_state
from tests.utils import make_config


def _one_update(name, preset="tiny"):
    cfg = make_config(preset)
    params, _ = transformer.init(cfg, jax.random.key(0))
    tx = train_state.make_optimizer(configs.optim(name=name, warmup_steps=0), 100)
    keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(params)))
    grads = jax.tree.unflatten(
        jax.tree.structure(params),
        [jax.random.normal(k, p.shape) for k, p in zip(keys, jax.tree.leaves(params), strict=True)],
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return params, updates


def _matrices(x, axes) -> np.ndarray:
    """x as its batch of [reduction, output] matrices (train_state.muon_axes)."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None]
    red, out = list(axes.reduction_axis), list(axes.output_axis)
    batch = [a for a in range(x.ndim) if a not in red + out]
    size = lambda axs: int(np.prod([x.shape[a] for a in axs]))
    return x.transpose(batch + red + out).reshape(size(batch), size(red), size(out))


@pytest.mark.parametrize("preset", ["tiny", "tiny_v4"])
def test_muon_updates_the_matrices_orthogonally_and_the_rest_as_adamw(preset):
    params, muon = _one_update("muon", preset)
    _, adamw = _one_update("adamw", preset)
    flat = jax.tree_util.tree_leaves_with_path(params)
    chosen = [train_state.is_muon_matrix(path, p) for path, p in flat]
    names = [jax.tree_util.keystr(path) for path, _ in flat]
    assert any(chosen) and not all(chosen)
    assert not any(c for c, n in zip(chosen, names, strict=True) if "embedding" in n)
    assert not any(c for c, n in zip(chosen, names, strict=True) if "lm_head" in n)
    assert not any(c for c, n in zip(chosen, names, strict=True) if "position_bias" in n)
    stacked = 0
    for (path, p), c, n, m, a in zip(
        flat, chosen, names, jax.tree.leaves(muon), jax.tree.leaves(adamw), strict=True
    ):
        if not c:  # embedding, head, norms, biases, vectors: AdamW's very update
            np.testing.assert_array_equal(np.asarray(m), np.asarray(a), err_msg=n)
            continue
        assert float(jnp.abs(m - a).max()) > 1e-5, n
        # Without the weight decay, Muon's step is orthogonalised matrix by matrix (each expert,
        # each V4 output group its own): the singular values of each are close together
        # (Newton-Schulz's quintic leaves them in ~[0.7, 1.2]).
        decay = 0.1 * 3e-3 * p  # weight_decay x learning rate x param
        axes = train_state.muon_axes(path, p)
        s = np.linalg.svd(_matrices(m + decay, axes), compute_uv=False)
        # (a square matrix's few near-zero singular values stay small after 5 iterations)
        assert np.all(np.quantile(s, 0.1, axis=-1) > 0.5 * s.max(-1)), (n, s)
        stacked += p.ndim > 2
    assert stacked > 0  # 3-D weights (MLA's q_b/kv_b/o, experts, V4's groups) are Muon's too
    rms = lambda leaves: float(
        jnp.sqrt(jnp.mean(jnp.concatenate([x.ravel() for x in leaves]) ** 2))
    )
    muon_rms = rms([m for c, m in zip(chosen, jax.tree.leaves(muon), strict=True) if c])
    assert 0.1 * 3e-3 < muon_rms < 0.4 * 3e-3  # optim.muon_rms=0.2 of the learning rate


def test_unknown_optimizer_names_the_key_and_the_allowed_ones():
    config = ConfigDict(
        dict(train=configs.train(), optim=configs.optim(name="sgd"), model=ConfigDict())
    )
    with pytest.raises(ValueError, match=r"optim.name='sgd'.*'adamw', 'muon'"):
        lm.validate_train_config(config, make_config("tiny"))
    with pytest.raises(ValueError, match=r"optim.muon_momentum=1.0"):
        lm.validate_optim(configs.optim(name="muon", muon_momentum=1.0))
