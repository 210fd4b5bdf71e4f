"""The base class of every config section: strict, so an unknown key is an error, not a no-op.

Defined once in `filters.base` (a filter is a config section too); ``pipeline`` may import
``filters``, never the reverse.
"""

from filters.base import Section as Section

__all__ = ["Section"]
