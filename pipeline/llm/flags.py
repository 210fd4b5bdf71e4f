"""Quality flags on a completion: truncated, empty, or refusal-like. Pure: text in, flags out."""

from __future__ import annotations

import re

# Openings of a refusal, not mentions: "I cannot stress enough" in a lesson is not a refusal,
# so only the first sentence is checked.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|assist|provide|write|create|comply)|"
    r"i cannot (help|assist|provide|write|create|comply)|i'?m (not able|unable) to|i am (not able|unable) to|"
    r"as an ai( language model)?[, ]|i must decline|i won'?t be able to)",
    re.IGNORECASE,
)


def completion_flags(text: str, finish_reason: str | None) -> list[str]:
    """Flags of one completion: ``truncated`` (hit max_tokens), ``empty``, ``refusal``."""
    flags = []
    if finish_reason == "length":
        flags.append("truncated")
    if not text.strip():
        flags.append("empty")
    elif _REFUSAL.match(text.strip()[:200]):
        flags.append("refusal")
    return flags
