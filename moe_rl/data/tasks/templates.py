"""Prompt templates: R1-Zero's, a plain one, and a model's own Jinja chat template."""

from __future__ import annotations

# DeepSeek-AI 2025, "DeepSeek-R1", Table 1, verbatim; `{prompt}` is the question.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)
PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"
TEMPLATES = ("r1_zero", "plain", "chat")


def apply_chat_template(
    chat_template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kwargs
) -> str:
    """Render a Hugging Face-style Jinja `chat_template` (from tokenizer_config.json).

    Uses a sandboxed Jinja environment configured as `transformers` does; `kwargs` (e.g.
    `bos_token`) are passed to the template.
    """
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError("chat templates need jinja2: pip install jinja2") from e

    def raise_exception(message):
        raise ValueError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(chat_template)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)


def format_prompt(
    template_name: str, question: str, chat_template: str | None = None, think_opened: bool = False
) -> str:
    """The prompt for `question`; it ends where the model's response begins.

    `think_opened` appends `<think>` so the response starts inside the reasoning (as TinyZero
    does); pass the same flag to `rewards.format_reward`.
    """
    if template_name == "r1_zero":
        prompt = R1_ZERO_TEMPLATE.format(prompt=question)
    elif template_name == "plain":
        prompt = PLAIN_TEMPLATE.format(prompt=question)
    elif template_name == "chat":
        if chat_template is None:
            raise ValueError("template 'chat' needs the model's chat_template string")
        return apply_chat_template(chat_template, [{"role": "user", "content": question}]) + (
            "<think>\n" if think_opened else ""
        )
    else:
        raise ValueError(f"unknown template {template_name!r}; expected one of {TEMPLATES}")
    return prompt + (" <think>" if think_opened else "")
