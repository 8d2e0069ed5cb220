"""Per-trial checkpoints: atomic writes, newest-good-first loading, weights_only unpickling."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

# torch is imported where it is used: place.py imports this module, and the read-only commands (best, status,
# report...) should not pay torch's import (~1.5 s per command, more on a busy machine).

KEEP = 2  # checkpoints kept per trial: the newest, and one to fall back on if it is corrupt
DEFAULT_ROOT = "checkpoints"  # relative to the working directory of `launch-study` (see tuner/store/place.py)

_log = logging.getLogger(__name__)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save via a temporary file in the same folder and a rename: readers see the old file or the new
    one, never half of one, even if the process dies mid-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CheckpointDir:
    """The checkpoints of one trial and its retries: ROOT/STUDY_KEY/TRIAL/epoch-NNNN.pt (tuner/store/place.py
    says which root and key)."""

    def __init__(self, root: Path, study_key: str, trial_number: int):
        self.path = root / study_key / str(trial_number)

    def _files(self) -> list[Path]:
        return sorted(self.path.glob("epoch-*.pt"), reverse=True)  # zero-padded names: newest first

    def save(self, state: dict[str, Any]) -> Path:
        """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
        final = self.path / f"epoch-{state['epoch']:04d}.pt"
        save_atomic(state, final)
        for old in self._files()[KEEP:]:
            old.unlink(missing_ok=True)
        return final

    def keep_only_newest(self) -> None:
        """A finished trial needs only its final state (for export); the fallback was for retries."""
        for old in self._files()[1:]:
            old.unlink(missing_ok=True)

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads; a corrupt one is logged and skipped."""
        import torch

        for path in self._files():
            try:
                return torch.load(path, weights_only=True, map_location="cpu")
            except Exception as exc:  # truncated or garbled file: fall back to the previous one
                _log.warning("checkpoint %s is unreadable (%s); trying an older one", path,
                             type(exc).__name__)
        return None
