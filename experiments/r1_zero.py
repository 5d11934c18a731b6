"""R1-Zero on a CPU: pretrain a tiny MoE base model on the embedded corpus, then GRPO with
rule-based rewards only (answer correct + strict <think>/<answer> format), and compare the
base and the trained policy on held-out questions.

Command:  python -m moe_rl.main --config=experiments/r1_zero.py
          any task: --config.task.name=rg:chain_sum (or countdown, rg:<dataset>, ...) with
                    its own knobs in --config.task.options ('' = its defaults)
          own base: --config.init_checkpoint=runs/pretrain_moe --config.model.vocab_size=264
                    --config.model.num_nextn_predict_layers=1 (that base has an MTP module)
Runtime:  on a 2-core EPYC VM alone: 9.3 min for seed 0 on the third session's (base 5.9 min:
          3600 pretraining steps of 0.083 s, reused on re-runs; GRPO 3.1 min: 40 steps of 3.5
          s; docs/results/r1_zero/quiet_seed_0.json); ~17-21 min on earlier VMs of the same
          kind (steps of ~0.17 s and 8-17 s); per-seed times in docs/results/r1_zero/seeds.md.
Result:   held-out 2-digit addition (128 test questions x 4 samples, T=0.6), seeds 0-4
          (`--seeds=0-4`, docs/results/r1_zero/seeds.md): pass@1 from 0.10-0.37 to 0.64-0.96
          (+48 to +68 points), the responses growing to ~78 tokens (column addition with the
          digits so far replaces guessing). Written: the table (printed and in
          runs/r1_zero/summary.json); r1_zero.png (accuracy, format, length, reward, KL,
          entropy over steps); samples.txt (completions during training), eval_samples.txt;
          metrics.jsonl and TensorBoard events. Re-running resumes (the base model and GRPO
          checkpoints).
"""

from ml_collections import ConfigDict

from moe_rl.train import configs


def get_config(model: str = "tiny") -> ConfigDict:
    # The blocks and the reasons for each value: moe_rl/train/configs.py r1_zero().
    return configs.r1_zero(model)
