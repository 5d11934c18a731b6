"""Config blocks shared by the experiment files (every field commented once, here)."""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict

from moe_rl.models.config import preset
from moe_rl.train import grpo_loss


def optim(**overrides) -> ConfigDict:
    c = ConfigDict(
        dict(
            name="adamw",  # 'adamw', or 'muon': Muon on 2-D matrices, AdamW on the rest
            learning_rate=3e-3,  # peak AdamW learning rate
            warmup_steps=50,  # linear warmup from 0
            end_lr_ratio=0.1,  # cosine decays to learning_rate * end_lr_ratio at num_steps
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,  # matrices only; norms and biases are exempt
            grad_clip=1.0,  # global-norm clipping
            muon_momentum=0.95,  # 'muon': Nesterov momentum of Muon
            muon_rms=0.2,  # 'muon': RMS of Muon's updates (AdamW's; learning rate shared)
        )
    )
    c.update(overrides)
    return c


def train(**overrides) -> ConfigDict:
    c = ConfigDict(
        dict(
            num_steps=300,
            batch_size=16,  # sequences per optimizer step (global batch)
            seq_len=256,  # tokens per packed sequence
            grad_accum=1,  # microbatches per step (batch_size must divide)
            mtp_weight=0.3,  # lambda of the MTP loss (DeepSeek-V3: 0.3, later 0.1)
            balance_alpha=1e-4,  # alpha of the sequence-wise balance loss
            z_loss=0.0,  # weight of mean(logsumexp^2); 0 disables
            bias_update_rate=1e-3,  # gamma of aux-loss-free balancing; 0 freezes the bias
            # DeepSeek Sparse Attention's indexer (V3.2 sec. 2.1.1, model.index_topk > 0): ''
            # trains as usual, 'warmup' = dense attention and only the indexer trains, on its
            # KL to the attention; 'sparse' = top-k attention, LM loss + dsa_kl_weight * KL
            dsa_stage="",
            dsa_kl_weight=1.0,  # weight of the indexer's KL in the 'sparse' stage
            log_every=1,  # write metrics every N steps
            eval_every=100,  # validation loss every N steps (and at the end); 0: only at the end
            eval_batches=4,  # validation batches (fixed, unshuffled)
            checkpoint_every=100,  # Orbax checkpoint every N steps (and at the end)
            keep_checkpoints=2,
        )
    )
    c.update(overrides)
    return c


def data(**overrides) -> ConfigDict:
    c = ConfigDict(
        dict(
            name="moe_rl_arithmetic",  # embedded corpus, or a TFDS text dataset (tiny_shakespeare)
            data_dir="",  # TFDS data_dir ('' = TFDS default ~/tensorflow_datasets)
            text_key="",  # text feature of a TFDS dataset ('' = 'text' or its only text feature)
            download=False,  # let TFDS download and prepare a missing dataset (needs network)
            validation_split="validation",  # split used for validation loss
            num_documents=100_000,  # embedded corpus: training documents
            num_validation=2_000,  # embedded corpus: validation documents
            corpus_seed=0,  # embedded corpus: generator seed
            mix="default",  # embedded corpus: document mix (data/arithmetic.py MIXES)
            tokenizer="byte",  # 'byte' or a Hugging Face tokenizer folder / tokenizer.json
            sft_train="",  # recipe 'sft': JSONL of {"prompt", "completion"} lines
            sft_validation="",
        )
    )
    c.update(overrides)
    return c


def mesh(**overrides) -> ConfigDict:
    """The device mesh (moe_rl/sharding.py): sizes of its four axes, -1 = the devices left.
    On one device every axis is 1 and nothing is sharded."""
    c = ConfigDict(
        dict(
            data=-1,  # batch rows split, parameters replicated
            fsdp=1,  # batch rows and parameters/optimizer state split (ZeRO-3)
            expert=1,  # routed experts split (expert parallelism), batch rows too
            tensor=1,  # heads, MLP units and vocabulary split (Megatron-style)
        )
    )
    c.update(overrides)
    return c


def facts_data(**overrides) -> ConfigDict:
    """The data block of the embedded facts corpus (moe_rl/data/facts.py, biographies): the
    fields of `data()` plus num_people; num_documents / num_validation count renderings."""
    c = data(
        name="moe_rl_facts",
        num_documents=100_000,  # training renderings: document i is person i % num_people
        num_validation=512,  # validation renderings (another random stream, same people)
    )
    c.num_people = 1000  # people, ~42 bits of attribute values each
    c.update(overrides)
    return c


def skills_data(**overrides) -> ConfigDict:
    """The data block of the embedded skills corpus (moe_rl/data/skills.py, letter codes): the
    fields of `data()` plus num_skills and zipf."""
    c = data(
        name="moe_rl_skills",
        num_documents=100_000,  # training documents of 45 entries
        num_validation=256,  # validation documents (another random stream, same codes)
    )
    c.num_skills = 36  # distinct letter codes, 1..36
    c.zipf = 1.0  # skill k is drawn with weight 1 / (k + 1)^zipf; 0: uniform
    c.update(overrides)
    return c


def lookup_data(**overrides) -> ConfigDict:
    """The data block of the embedded lookup-table corpus (moe_rl/data/lookup.py, one fact a
    document): the fields of `data()` plus num_keys; document i is key i % num_keys."""
    c = data(
        name="moe_rl_lookup",
        num_documents=8000,  # training documents (each key once: the packer shuffles epochs)
        num_validation=1024,  # validation documents: keys of the same table, another order
    )
    c.num_keys = 8000  # facts in the table, 1..8836 (two printable ASCII characters a key)
    c.update(overrides)
    return c


def task(**overrides) -> ConfigDict:
    """Which verifiable task and how it is asked (moe_rl/data/tasks): the R1-Zero recipes' and
    the evaluation's (which adds the split and the number of questions)."""
    c = ConfigDict(
        dict(
            name="arithmetic",  # built-in, rg:<name>, tfds:<name>, jsonl:/parquet:<path>, hf:<name>
            # The task's knobs, "name=value,...", e.g. "num_digits=3,operators='+-'";
            # '' = its defaults (arithmetic: a + b with numbers of up to 2 digits).
            options="",
            template="r1_zero",  # r1_zero | plain | chat
            think_opened=False,  # prompt ends with '<think>' (TinyZero style)
            seed=0,  # question order (train) and the held-out questions (test)
        )
    )
    c.update(overrides)
    return c


def sampling(**overrides) -> ConfigDict:
    """How the policy samples its rollouts (and, in `r1_eval`, its held-out answers)."""
    c = ConfigDict(dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=112))
    c.update(overrides)
    return c


def grpo(**overrides) -> ConfigDict:
    """The GRPO block of an R1-Zero recipe (moe_rl/recipes/r1_zero.py, moe_rl/train/grpo.py)."""
    c = ConfigDict(
        dict(
            num_steps=40,
            num_questions=8,  # questions per step (B)
            # G=16 with DAPO dynamic sampling: a group is all wrong with probability (1-p)^G,
            # so at base accuracy p=0.1 G=16 loses 19% of groups where G=8 loses 43%, and the
            # refills replace those.
            num_generations=16,  # completions per question (G)
            num_iterations=1,  # mu: passes over each batch of rollouts
            minibatch_size=32,  # sequences per optimizer update
            # The loss: advantage, adv_eps, eps_low, eps_high, ratio, beta, kl, aggregation,
            # with the defaults and the meaning of grpo_loss.LossConfig (one source).
            **dataclasses.asdict(grpo_loss.LossConfig()),
            # pi_old of the ratio: the sampler's log-probs, or a training forward of the same
            # weights before the step's first update (what is_correction weighs the sampler's
            # against; one more forward per step).
            old_logprobs="sampler",
            # Routing replay (R3, Ma et al. 2025, "Stabilizing MoE RL by aligning training and
            # inference routers"; DeepSeek-V3.2's Keep Routing): the training forwards route
            # each token to the experts the sampler chose for it (gates from the current
            # router). Off, the sampler's routing is still recorded, to measure the mismatch.
            routing_replay=False,
            # DeepSeek-V3.2's Keep Sampling Mask: the sampler's top-k/top-p truncation is kept
            # and applied to pi_theta's logits in training (and to a recomputed pi_old), so
            # both policies share one action subset; the sampler's log-probs are then of the
            # truncated distribution. Changes nothing with top_k=0 and top_p=1 (the default).
            keep_sampling_mask=False,
            # One-step-off-policy rollouts (grpo_step.OffPolicyStep): 1 samples step n+1's
            # batch with the weights of step n's start while step n updates, so each batch is
            # one policy version old (pi_old the sampler's, or with old_logprobs='recompute'
            # the current weights' and is_correction weighing the staleness); 0 samples with
            # the weights being updated.
            off_policy_steps=0,
            dynamic_sampling=True,  # DAPO: replace zero-variance groups
            max_refills=2,  # extra sampling rounds per step with dynamic sampling
            # What a refill round samples: 'batch', num_questions fresh questions (DAPO's
            # batches, extras dropped) | 'missing', only as many as groups are missing, rounded
            # up to a power of two (at most log2(num_questions) more sampler shapes compile).
            refill="batch",
            overlong_filter=False,  # DAPO: truncated completions carry no gradient
            overlong_buffer=0,  # DAPO soft overlong penalty over the last N tokens; 0 off
            accuracy_weight=1.0,
            format_weight=0.1,  # TinyZero's format score
            use_math_verify=False,
            bias_update_rate=0.0,  # aux-loss-free MoE balancing during RL; 0 freezes it
            checkpoint_every=10,
            keep_checkpoints=2,
            samples_every=5,  # append completions to samples.txt every N steps
            samples_per_write=2,
        )
    )
    c.update(overrides)
    return c


def r1_eval(max_new_tokens: int = 112, **overrides) -> ConfigDict:
    """The held-out evaluation of an R1-Zero recipe (moe_rl/evaluate.py): pass@1 and maj@k
    over k samples of each test-split question."""
    c = ConfigDict(
        dict(
            num_questions=128,  # held-out (test split) questions
            num_samples=4,  # k samples per question
            batch_size=64,
            use_math_verify=False,
            extract="tags",
            num_printed=8,
            sampling=sampling(temperature=0.6, top_p=0.95, max_new_tokens=max_new_tokens),
        )
    )
    c.update(overrides)
    return c


# ---------------------------------------------------------------- whole experiment configs
# Experiments that build on another (distillation on R1-Zero, R1 on R1-Zero) start from these.


def r1_zero(model: str = "tiny") -> ConfigDict:
    """experiments/r1_zero.py: pretrain a base on the embedded corpus, GRPO, evaluate (its
    docstring says what each choice measured)."""
    return ConfigDict(
        dict(
            name="r1_zero" if model == "tiny" else f"r1_zero_{model}",
            recipe="r1_zero",
            seed=0,
            init_checkpoint="",  # a workdir with a pretrained checkpoint; '' = pretrain one now
            # No MTP module: at this size it is one more transformer block, a third of every
            # pretraining step (docs/results/r1_zero/train_step_parts.md); the policy never
            # uses it.
            model=preset(model, vocab_size=384, num_nextn_predict_layers=0),
            tokenizer="base",  # 'base': the base model's own (its learned BPE), or a name/path
            # The base model's pretraining (used only when init_checkpoint is ''); the same
            # blocks as experiments/pretrain_moe.py.
            pretrain=dict(
                recipe="pretrain",
                # Mostly additions, half the thinks worked (by columns, with the digits so far) and
                # half a bare guess (data/arithmetic.py MIXES['r1']); a BPE learned on it (digits
                # split) encodes the 450-byte R1-Zero prompt in ~120 tokens. Small batches, many
                # steps: the model learns to copy the question's digits (a loss drop near step
                # 1000-1400) and to add them column by column. With fewer steps or without the
                # digits so far, some seeds' bases guess more often right than they add, and GRPO
                # then reinforces guessing (docs/results/r1_zero/README.md).
                data=data(mix="r1", tokenizer="bpe:384"),
                train=train(seq_len=256, batch_size=8, num_steps=3600),
                optim=optim(),
                mesh=mesh(),
            ),
            task=task(),
            # A column addition of two 2-digit numbers takes ~80 tokens.
            sampling=sampling(max_new_tokens=112),
            grpo=grpo(num_steps=40),
            optim=optim(learning_rate=3e-4, warmup_steps=5, weight_decay=0.0),
            # GRPO's devices (the base's pretraining has its own, pretrain.mesh)
            mesh=mesh(),
            eval=r1_eval(max_new_tokens=112),
        )
    )


def distill() -> ConfigDict:
    """experiments/distill.py: an R1-Zero teacher, rejection sampling, a dense student's SFT."""
    # The teacher's whole R1-Zero config: used to run it when teacher_workdir is '', and for its
    # model, task and tokenizer in any case.
    teacher = r1_zero()
    # Every sampling here (the teacher's answers, the student's own, the evaluations) gets the
    # teacher's budget: its column additions with the digits so far run to ~80 tokens (the 80
    # used with the previous teachers would cut many of them).
    answer_tokens = teacher.sampling.max_new_tokens
    teacher.name = "distill_teacher"
    # ~3x fewer activated parameters than the teacher's 160k (6x fewer in total), tied
    # embeddings: the same vocabulary (the teacher's BPE) on a 32-wide, 3-layer dense model.
    student = preset(
        "tiny_dense",
        vocab_size=teacher.model.vocab_size,
        hidden_size=32,
        intermediate_size=96,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return ConfigDict(
        dict(
            name="distill",
            recipe="distill",
            seed=0,
            # A finished experiments/r1_zero.py workdir or a Hugging Face model folder (its
            # config.json, weights and tokenizer); '' = run the R1-Zero recipe here.
            teacher_workdir="",
            teacher=teacher,
            student=dict(
                # A pretrained student: a moe_rl workdir (its newest checkpoint; the model block
                # below must match it) or a Hugging Face model folder (its architecture replaces
                # the model block, its tokenizer reads the teacher's answers); '' = pretrain it.
                init_checkpoint="",
                model=student,
                # Pretraining like the teacher's base (same corpus mix, the teacher's tokenizer).
                pretrain=dict(
                    recipe="pretrain",
                    data=data(mix="r1"),
                    train=train(seq_len=256, batch_size=8, num_steps=2400),
                    optim=optim(),
                ),
                sft=dict(
                    data=data(),
                    # ~18 epochs of the ~1100 kept answers: 300 steps reached pass@1 0.12,
                    # 1200 0.80 (README "Distillation"); at 1200 the SFT validation loss (5% of
                    # the teacher's answers, held out) was still falling on 2 seeds of 3
                    # (docs/results/distill/README.md), so the student trains twice as long.
                    train=train(seq_len=256, batch_size=8, num_steps=2400),
                    optim=optim(learning_rate=1e-3, warmup_steps=20),
                ),
            ),
            distill=dict(
                # sft: SFT on the teacher's kept answers (R1) | logit_kd: + the teacher's logits
                # (forward KL at `temperature`) | gkd: on-policy, generalized JSD (Agarwal 2023)
                mode="sft",
                temperature=1.0,  # logit_kd, gkd: softmax temperature of both models
                ce_weight=0.0,  # logit_kd, gkd: weight of the hard-label cross-entropy term
                beta=0.5,  # gkd: 0 = forward KL, 1 = reverse KL, between = generalized JSD
                lmbda=0.5,  # gkd: fraction of batches whose completions the student samples
                # gkd: the student's sampling of its own completions
                student_sampling=sampling(max_new_tokens=answer_tokens),
                num_questions=1024,  # training questions the teacher answers
                question_seed=1,
                samples_per_question=4,
                shortest_only=False,  # keep only the shortest verified answer per question
                # True: keep only verified answers (R1's rejection sampling); False: every
                # sample (sequence-level KD, Kim & Rush 2016; a pipeline check with a weak teacher)
                rejection=True,
                validation_fraction=0.05,  # questions held out of SFT for its validation loss
                sampling=sampling(max_new_tokens=answer_tokens),
            ),
            eval=dict(
                num_questions=128,
                num_samples=4,
                batch_size=64,
                use_math_verify=False,
                extract="tags",
                num_printed=8,
                sampling=sampling(temperature=0.6, top_p=0.95, max_new_tokens=answer_tokens),
            ),
        )
    )
