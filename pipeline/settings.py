"""The base class of every config section: strict, so an unknown key is an error, not a no-op."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
