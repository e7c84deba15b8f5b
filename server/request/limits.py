"""Size limits on request bodies, checked on the parsed JSON before any validation or tokenising.

Every limit is a setting (docs/limits.md); each check does work bounded by
its limit (it stops counting past it), so a 4 MiB list costs no more than a short one. A value of
the wrong type is left to the route's own validation, which names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import ValidationError
from server.serving import ServingModel
from server.settings import ServerSettings

PROMPT_CHARS_PER_TOKEN = 32  # default --max-prompt-chars = this x max context
FALLBACK_CONTEXT = 8192  # max context assumed while no model is loaded (requests get 503 then)
TRITON_WORD_LISTS = ("bad_words", "stop_words")
TRITON_BIAS_LISTS = ("embedding_bias_words", "embedding_bias_weights")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    prompt_chars: int
    chat_messages: int
    word_list: int
    word_list_chars: int
    logit_bias: int


def limits_for(settings: ServerSettings, model: ServingModel | None) -> RequestLimits:
    """The settings, with the context-derived defaults filled from the served model."""
    context = model.max_context if model is not None else FALLBACK_CONTEXT
    return RequestLimits(
        prompt_chars=settings.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * context,
        chat_messages=settings.max_chat_messages or context,
        word_list=settings.max_word_list, word_list_chars=settings.max_word_list_chars,
        logit_bias=settings.max_logit_bias)


def _too_many(field: str, what: str, limit: int, flag: str) -> ValidationError:
    return ValidationError(f"'{field}' has more than {limit} {what} (server limit {flag})")


def _measure(value: Any, field: str, max_items: int, max_chars: int,
             flags: tuple[str, str]) -> None:
    """Leaves of a scalar or nested list: at most max_items of them and max_chars characters."""
    items = chars = nodes = 0
    stack = [value]
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > 2 * max_items + 16:  # lists of empty lists count too
            raise _too_many(field, "entries", max_items, flags[0])
        if isinstance(item, list):
            if len(item) > max_items:
                raise _too_many(field, "entries", max_items, flags[0])
            stack.extend(item)
            continue
        items += 1
        chars += len(item) if isinstance(item, str) else 0
        if items > max_items:
            raise _too_many(field, "entries", max_items, flags[0])
        if chars > max_chars:
            raise _too_many(field, "characters", max_chars, flags[1])


def _triton_values(body: dict[str, Any]) -> list[tuple[str, Any]]:
    params = body.get("parameters")
    nested = list(params.items()) if isinstance(params, dict) else []
    return [*body.items(), *nested]


def check_triton_body(body: dict[str, Any], limits: RequestLimits) -> None:
    """Triton generate: text_input, bad_words/stop_words, embedding_bias_words/_weights."""
    for key, value in _triton_values(body):
        if key == "text_input":
            _measure(value, key, limits.prompt_chars, limits.prompt_chars,
                     ("--max-prompt-chars", "--max-prompt-chars"))
        elif key in TRITON_WORD_LISTS:
            _measure(value, key, limits.word_list, limits.word_list_chars,
                     ("--max-word-list", "--max-word-list-chars"))
        elif key in TRITON_BIAS_LISTS:
            _measure(value, key, limits.logit_bias, limits.prompt_chars,
                     ("--max-logit-bias", "--max-prompt-chars"))


def _message_chars(message: Any, budget: int) -> int:
    """Characters of one message's content (a content part counts at least 1)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    if len(content) > budget:
        return budget + 1
    return sum(max(1, len(p["text"]) if isinstance(p, dict) and isinstance(p.get("text"), str)
                   else 1) for p in content)


def _check_messages(messages: Any, limits: RequestLimits) -> None:
    if not isinstance(messages, list):
        return
    if len(messages) > limits.chat_messages:
        raise _too_many("messages", "messages", limits.chat_messages, "--max-chat-messages")
    chars = 0
    for message in messages:
        chars += _message_chars(message, limits.prompt_chars - chars)
        if chars > limits.prompt_chars:
            raise _too_many("messages", "characters of content", limits.prompt_chars,
                            "--max-prompt-chars")


def check_openai_body(body: dict[str, Any], limits: RequestLimits) -> None:
    """OpenAI completions/chat: prompt, messages, stop, logit_bias."""
    if "prompt" in body:
        _measure(body["prompt"], "prompt", limits.prompt_chars, limits.prompt_chars,
                 ("--max-prompt-chars", "--max-prompt-chars"))
    _check_messages(body.get("messages"), limits)
    if "stop" in body:
        _measure(body["stop"], "stop", limits.word_list, limits.word_list_chars,
                 ("--max-word-list", "--max-word-list-chars"))
    bias = body.get("logit_bias")
    if isinstance(bias, (dict, list)) and len(bias) > limits.logit_bias:
        raise _too_many("logit_bias", "entries", limits.logit_bias, "--max-logit-bias")
