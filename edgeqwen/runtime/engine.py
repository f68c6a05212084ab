"""Load an artifact (manifest and hashes checked) and pick its backend from the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeqwen.artifact import load_verified
from edgeqwen.errors import ArtifactError
from edgeqwen.runtime.threads import resolve_threads


class Engine:
    def __init__(self, folder: str | Path, threads: int | str | None = None, verify: str = "full") -> None:
        self.folder = Path(folder)
        if verify not in ("full", "size"):
            raise ValueError("verify must be 'full' (sha256) or 'size'")
        self.manifest: dict[str, Any] = load_verified(self.folder, full=verify == "full")
        self.runtime: dict[str, Any] = self.manifest["runtime"]
        self.threads = resolve_threads(threads if threads is not None else self.runtime.get("threads", "auto"))
        backend = self.runtime.get("backend")
        if backend == "genai":
            from edgeqwen.runtime.backends.genai import GenaiBackend

            self.backend = GenaiBackend(self.folder, self.runtime, self.threads)
        else:
            raise ArtifactError(f"artifact {self.folder}: unknown runtime backend {backend!r}")
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.folder / self.runtime["tokenizer"]))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def load(folder: str | Path, **kwargs: Any) -> Engine:
    return Engine(folder, **kwargs)
