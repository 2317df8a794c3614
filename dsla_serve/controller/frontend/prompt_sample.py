"""The opt-in sample of served prompts the background trainer also trains on (`trainer.serve_prompts_sample`).

    sample = PromptReservoir(capacity=1000, seed=0)
    sample.offer("the prompt text")                     # every served prompt; keeps a uniform sample
    write_prompts_jsonl(served_prompts_path(artifact_dir), sample.texts())   # {"text": ...} per line

Privacy: only prompt texts are kept (never completions, ids or client details), at most `capacity`
of them, in the ingress's memory; they leave it only as the jsonl file next to the artifact, which
the trainer reads (`data.train_only_paths`). Nothing here logs a prompt.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from ...model.manifest import served_prompts_path
from ..messages import PromptSampleStatus


class PromptReservoir:
    """A uniform random sample of at most `capacity` of the texts offered so far (reservoir sampling).

    After n offers, each of them is in the sample with probability min(1, capacity / n). Seeded, so a
    given sequence of offers always leaves the same sample. `version` counts changes to the sample.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"the prompt sample capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.version = 0
        self._texts: list[str] = []
        self._rng = random.Random(seed)

    def offer(self, text: str) -> bool:
        """Consider one served prompt; True when it entered the sample. Empty texts are ignored."""
        if not text.strip():
            return False
        self.seen += 1
        if len(self._texts) < self.capacity:
            self._texts.append(text)
        else:
            slot = self._rng.randrange(self.seen)
            if slot >= self.capacity:
                return False
            self._texts[slot] = text
        self.version += 1
        return True

    def texts(self) -> list[str]:
        """The sample now (a copy)."""
        return list(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


def write_prompts_jsonl(path: str | os.PathLike, texts: list[str]) -> Path:
    """Write `{"text": ...}` per prompt to `path` atomically (a reader sees the old or the new file whole).

    The file is readable by its owner only (0600): it holds users' prompts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


PROMPT_ROLES = ("system", "developer", "user")  # not assistant/tool turns: those are model outputs


def chat_prompt_text(request) -> str:
    """The text of a chat request's system, developer and user messages, joined by blank lines.

    `request`: a ChatCompletionRequest. Assistant and tool messages are left out (earlier completions).
    """
    return "\n\n".join(m.text() for m in request.messages if m.role in PROMPT_ROLES and m.text().strip())


class ServedPromptSample:
    """The ingress side: offer prompts as they are served, write the file when the sample changed."""

    def __init__(self, artifact_dir: str | os.PathLike, capacity: int, seed: int = 0):
        self.path = served_prompts_path(artifact_dir)
        self.reservoir = PromptReservoir(capacity, seed)
        self._written_version = 0

    def offer(self, texts: list[str]) -> None:
        for text in texts:
            self.reservoir.offer(text)

    @property
    def dirty(self) -> bool:
        return self.reservoir.version != self._written_version

    def snapshot(self) -> tuple[int, list[str]]:
        """(version, texts) to write, e.g. from another thread while offers go on."""
        return self.reservoir.version, self.reservoir.texts()

    def written(self, version: int) -> None:
        self._written_version = version

    def write(self) -> Path | None:
        """Write the sample when it changed since the last write; the path written, else None."""
        if not self.dirty:
            return None
        version, texts = self.snapshot()
        write_prompts_jsonl(self.path, texts)
        self.written(version)
        return self.path

    def status(self) -> PromptSampleStatus:
        return PromptSampleStatus(kept=len(self.reservoir), capacity=self.reservoir.capacity,
                                  seen=self.reservoir.seen, file=str(self.path))
