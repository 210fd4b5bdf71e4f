"""The base class of every config section (strict, so an unknown key is an error, not a no-op), and
the public form of a section that manifests and cards record (secrets removed).

Defined once in `filters.base` (a filter is a config section too); ``pipeline`` may import
``filters``, never the reverse.
"""

from typing import Any

from pydantic import BaseModel

from filters.base import Section as Section

__all__ = ["Section", "public_dict", "strip_secrets"]


def public_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as JSON-able data with secrets removed: what manifests and cards may hold."""
    return strip_secrets(cfg.model_dump(mode="json"))


def strip_secrets(node: Any) -> Any:
    """``node`` with the value of every secret-named key (:func:`is_secret_key`) set to None."""
    if isinstance(node, dict):
        return {
            k: (None if is_secret_key(k) else strip_secrets(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [strip_secrets(v) for v in node]
    return node


def is_secret_key(key: str) -> bool:
    """``api_key``, ``hf_token``, ``password``: yes; ``max_tokens``, ``tokenizer``: no (a substring test blanked them)."""
    words = key.lower().replace("-", "_").split("_")
    return "token" in words or "password" in words or "secret" in words or "api_key" in key.lower()
