"""A conversation rendered with the tokenizer's own chat template, as the token ids a model reads."""

from __future__ import annotations


class NoChatTemplateError(ValueError):
    """The tokenizer has no chat template (a base model): send plain completions instead."""


def chat_token_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` ([{"role", "content"}, ...]) rendered with the template, the assistant's
    turn opened. Special tokens come from the template's text only (none are added around it)."""
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError("this model's tokenizer has no chat template")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
