"""The base class of every config section: strict, so an unknown key is an error, not a no-op."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Attribute docstrings become field descriptions, so `textbook config --reference` documents them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
