"""Where a study's checkpoints live: an identity and an absolute root, stored in the study at launch.

Layout: ROOT/<study uuid>/<lineage trial number>/epoch-NNNN.pt. The uuid makes a deleted-and-relaunched
study under the same name start clean (it never meets the old study's checkpoints), and the absolute root
lets every command (workers, `tuner export`, `tuner delete`, `tuner status`) find them from any working
directory.

Which root, written once: $TUNER_CHECKPOINT_DIR of the process (a host that mounts the shared folder
elsewhere) > the root stored at launch > ./checkpoints (studies launched before the uuid existed).
Studies launched before this layout keep the old one, ROOT/<study name>/<trial>, so they still resume and export.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.store.checkpoint import DEFAULT_ROOT, CheckpointDir

ENV = "TUNER_CHECKPOINT_DIR"
UUID_ATTR = "tuner_uuid"  # study user attributes, next to tuner_config
ROOT_ATTR = "tuner_checkpoint_root"


@dataclass(frozen=True)
class StudyPlace:
    """The folder of one study's checkpoints; `key` is its uuid (or its name, for an old study)."""

    root: Path
    key: str

    @property
    def path(self) -> Path:
        return self.root / self.key

    def trial(self, lineage: int) -> CheckpointDir:
        return CheckpointDir(self.root, self.key, lineage)

    def lineages(self) -> dict[int, Path]:
        """Lineage number -> its folder, for the folders that exist here."""
        try:
            entries = list(self.path.iterdir())
        except OSError:  # not created yet, not mounted on this host, or not a folder
            return {}
        return {int(p.name): p for p in entries if p.name.isdigit() and p.is_dir()}

    def size(self) -> int | None:
        """Bytes under the study's folder; None when this host has no such folder (or the key climbs out of the
        root: what is there is not the study's)."""
        return tree_size(self.path) if self.path.is_dir() and _strictly_inside(self.path, self.root) else None

    def check_removable(self) -> None:
        """One TunerError unless the folder is strictly inside the root: a key that climbs out of it (an old
        study's name such as "../x", from before names were checked, or an edited uuid) is refused."""
        if not _strictly_inside(self.path, self.root):
            raise TunerError(f"refusing to delete {self.path}: it is not inside the checkpoint root {self.root}")

    def remove(self) -> int:
        """Delete the study's folder (check_removable first); returns the bytes freed."""
        return remove_tree(self.path, inside=self.root)


def _env_root() -> Path | None:
    value = os.environ.get(ENV)
    return Path(os.path.abspath(value)) if value else None


def identity_attrs() -> dict[str, str]:
    """The attributes a new study is launched with: a fresh uuid and the absolute checkpoint root here."""
    root = _env_root() or Path(os.path.abspath(DEFAULT_ROOT))
    return {UUID_ATTR: uuid.uuid4().hex, ROOT_ATTR: str(root)}


def study_place(attrs: dict[str, Any], name: str) -> StudyPlace:
    """The study's checkpoint folder from its user attributes, by the precedence in the module docstring."""
    stored = attrs.get(ROOT_ATTR)
    root = _env_root() or (Path(stored) if stored else Path(os.path.abspath(DEFAULT_ROOT)))
    return StudyPlace(root, attrs.get(UUID_ATTR) or name)


def _strictly_inside(path: Path, root: Path) -> bool:
    """Whether `path` resolves (links followed) to something below `root`, not to the root itself."""
    resolved, root = Path(path).resolve(), Path(root).resolve()
    return resolved != root and root in resolved.parents


def tree_size(path: Path) -> int:
    """Bytes of the regular files under path (0 if it is gone; files vanishing meanwhile are skipped)."""
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_size
            except OSError:
                pass
    return total


def remove_tree(path: Path, inside: Path | None = None) -> int:
    """rmtree that tolerates a concurrent remover (another worker's sweep); returns the bytes freed. With
    `inside`, a path that does not resolve to a folder strictly below it raises TunerError instead."""
    if inside is not None and not _strictly_inside(path, inside):
        raise TunerError(f"refusing to delete {path}: it is not inside the checkpoint root {inside}")
    before = tree_size(path)
    shutil.rmtree(path, ignore_errors=True)
    return before - tree_size(path)


def link_tree(source: Path, target: Path) -> tuple[int, int, bool]:
    """Give `target` the files under `source` as hard links (copies where the filesystem refuses a link):
    no extra disk, and deleting either folder leaves the other's files whole. Safe because a checkpoint is
    never written in place (save_atomic, PBT's exploit: a new file renamed over the old name). Returns
    (files, bytes, whether every file is a link). Temporary files of writes in progress are skipped, and
    files removed meanwhile (a worker's retention sweep) too."""
    files = size = 0
    all_links = True
    for folder, _, names in os.walk(source):
        into = target / Path(folder).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.startswith(".tmp-"):
                continue
            src, dst = Path(folder) / name, into / name
            try:
                try:
                    os.link(src, dst)
                except OSError as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    shutil.copy2(src, dst)  # another filesystem, or one without hard links
                    all_links = False
                files, size = files + 1, size + dst.stat().st_size
            except FileNotFoundError:
                continue
    return files, size, all_links


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
