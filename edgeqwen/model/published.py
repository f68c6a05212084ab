"""The published config.json (and generation_config.json, where one was found) of real Qwen models.

Copies of what Qwen publishes on the Hub, kept whole in ``configs/<model>/`` (where each came from:
configs/SOURCES.md). Two kinds of reader: the planner's catalogue builds its shapes from them through
the one parser (edgeqwen.model.spec), and the fixture makers start every fixture from one and change
only its sizes. No network: the files ship with the package.
"""

from __future__ import annotations

from pathlib import Path

from edgeqwen.model.generation import read_json

CONFIGS = Path(__file__).parent / "configs"


def published_models() -> list[str]:
    """The models whose config.json is stored (folder names, e.g. "Qwen3-8B")."""
    return sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").is_file())


def published_config(model: str) -> dict:
    """The stored config.json of ``model`` (a name in published_models())."""
    path = CONFIGS / model / "config.json"
    if not path.is_file():
        raise KeyError(f"no published config {model!r}; stored: {', '.join(published_models())}")
    return read_json(path)


def published_generation_config(model: str) -> dict | None:
    """The stored generation_config.json of ``model``, or None where none was found."""
    path = CONFIGS / model / "generation_config.json"
    return read_json(path) if path.is_file() else None
