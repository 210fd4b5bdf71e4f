"""The `hub` section: dataset card and push settings."""

from __future__ import annotations

from pipeline.settings import Section


class HubConfig(Section):
    repo_id: str | None = None
    private: bool = False
    license: str = "apache-2.0"
