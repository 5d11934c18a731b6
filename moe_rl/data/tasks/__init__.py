"""Verifiable tasks by name: built-in generators, `rg:<name>` (reasoning-gym), `tfds:<name>`,
question files `jsonl:<path>` / `parquet:<path>` and Hugging Face datasets `hf:<dataset>[:<config>]`
(GSM8K, MATH or your own).

task = get_task("countdown", num_numbers=3)
train = task.stream("train", seed=0)           # endless
test = task.examples("test", n=200, seed=0)
score = task.verify("3 * 5 + 7", test[0])      # in [0, 1]
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping

from moe_rl.data.tasks.arithmetic import ArithmeticTask
from moe_rl.data.tasks.base import SPLITS, Example, GeneratedTask, Task, split_of
from moe_rl.data.tasks.countdown import CountdownTask
from moe_rl.data.tasks.templates import TEMPLATES, apply_chat_template, format_prompt

# Built-in tasks (generated locally, no download): name -> factory(**kwargs).
TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
}


def get_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with `kwargs` (its difficulty knobs, data_dir, ...)."""
    if name.startswith("rg:"):
        from moe_rl.data.tasks.rg import ReasoningGymTask

        return ReasoningGymTask(name.removeprefix("rg:"), **kwargs)
    if name.startswith("tfds:"):
        from moe_rl.data.tasks.tfds_math import TfdsMathTask

        return TfdsMathTask(name.removeprefix("tfds:"), **kwargs)
    if name.startswith(("jsonl:", "parquet:", "hf:")):
        from moe_rl.data.tasks.files import FileTask

        kind, _, path = name.partition(":")
        return FileTask(kind, path, **kwargs)
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}, or a prefix "
            "'rg:<reasoning-gym dataset>' (e.g. rg:chain_sum), 'tfds:<dataset>' "
            "(e.g. tfds:math_dataset/arithmetic__add_or_sub), 'jsonl:<path>', 'parquet:<path>' or "
            "'hf:<dataset>[:<config>]' (e.g. hf:openai/gsm8k:main)"
        )
    return TASKS[name](**kwargs)


def parse_options(options: str | Mapping) -> dict:
    """Task knobs from a config string `"num_digits=3,operators='+-'"` (values are Python
    literals, else plain strings) or from a mapping, as keyword arguments of `get_task`."""
    if isinstance(options, Mapping):
        return dict(options)
    out = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(
                f"config.task.options={options!r}: expected 'name=value,...', got {item!r}"
            )
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[name.strip()] = value.strip()
    return out


def task_from_config(t) -> Task:
    """The task of a `config.task` block (fields `name` and `options`); knobs the task does not
    take are an error naming config.task.options."""
    options = parse_options(t.get("options", ""))
    try:
        return get_task(t.name, **options)
    except TypeError as e:  # an unexpected keyword argument: a knob of another task
        raise ValueError(
            f"config.task.options={t.get('options')!r} does not fit task {t.name!r} ({e}); "
            "pass --config.task.options='' for its defaults, or its own knobs"
        ) from e


__all__ = [
    "SPLITS",
    "TASKS",
    "TEMPLATES",
    "ArithmeticTask",
    "CountdownTask",
    "Example",
    "GeneratedTask",
    "Task",
    "apply_chat_template",
    "format_prompt",
    "get_task",
    "parse_options",
    "task_from_config",
    "split_of",
]
