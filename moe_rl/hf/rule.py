"""One stored-tensor rule: a Hugging Face tensor name and how its layout maps to ours."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one of our (per-layer) parameters is stored in Hugging Face form.

    `name` may hold '{e}' (one tensor per routed expert, stacked on our axis 0). kind:
    'linear': a torch [out, in] weight; ours is [*in, *out] with the first `in_dims` axes the
    input (o_proj: [heads, v_dim, D], in_dims=2), i.e. the transpose, reshaped;
    'copy': the same array; 'flat': the same numbers stored flat (q/k/v biases [heads, dim]);
    'eh_proj': MTP's [D, 2D] acting on [emb; h], ours is [2D, D] acting on [h; emb];
    'grouped': DeepSeek-V4's grouped o_a_proj, torch [G * out, in], ours [G, in, out];
    'index': an integer table (V4's tid2eid), the same array, stored int64 as torch keeps it.
    """

    name: str
    kind: str = "linear"
    in_dims: int = 1
