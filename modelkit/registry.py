"""Model-version registry: version names, the current pointer and its history, retention, rollback, the lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from modelkit.artifact import MANIFEST_FILE, current_version, load_artifact, set_current
from schemas import ModelManifest

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
"""Refused candidates are written to MODELS_DIR/rejected/<version>/ (never listed, never current)."""
HISTORY_FILE = ".current-history.jsonl"
"""One JSON line per move of the current pointer made by retrain or rollback: {time, version, previous, action}."""
LOCK_FILE = ".retrain.lock"

Publisher = Callable[[ModelManifest], None]
"""Announces a new current version (e.g. a model-update message); handed in by the caller."""


class RetrainError(RuntimeError):
    """A retrain cycle or rollback cannot run (lock held, data leak, nothing to train on); one-line message."""


# ------------------------------------------------------------------------------------------------ the pointer


def new_version_name(now: float | None = None) -> str:
    """Sortable, unique version name: UTC time to the second plus a random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def list_versions(models_dir: Path) -> list[str]:
    """Published versions (directories with a manifest), oldest first."""
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name for p in models_dir.iterdir()
        if not p.is_symlink() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


def versions_by_age(directory: Path) -> list[str]:
    """Published versions in ``directory``, oldest first by manifest ``created_at`` (then name)."""
    def created(name: str) -> float:
        try:
            return float(json.loads((directory / name / MANIFEST_FILE).read_bytes())["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    return sorted(list_versions(directory), key=lambda name: (created(name), name))


# ------------------------------------------------------------------------------------------------ history


def append_history(models_dir: Path, version: str, previous: str | None, action: str) -> None:
    """Record one move of the current pointer (fsynced JSON line)."""
    entry = {"time": time.time(), "version": version, "previous": previous, "action": action}
    with open(models_dir / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_history(models_dir: Path) -> list[dict[str, Any]]:
    """The pointer moves recorded so far, oldest first (unreadable lines skipped)."""
    try:
        lines = (models_dir / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def replaced_version(models_dir: Path) -> str | None:
    """The version that was current before the current one (from the pointer history), if known."""
    current = current_version(models_dir)
    for entry in reversed(read_history(models_dir)):
        if entry.get("version") == current:
            previous = entry.get("previous")
            return previous if isinstance(previous, str) else None
    if current is not None:  # a pointer moved by something else (e.g. `streamrec train`): its gate says
        with contextlib.suppress(OSError, ValueError):
            manifest = ModelManifest.model_validate_json((models_dir / current / MANIFEST_FILE).read_bytes())
            compared = (manifest.gate or {}).get("compared_with")
            return compared if isinstance(compared, str) else manifest.parent_version
    return None


# ------------------------------------------------------------------------------------------------ lock


@contextlib.contextmanager
def models_lock(models_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock on ``models_dir`` (a cron job overlapping the previous one is refused)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(f"another retrain cycle or rollback holds the lock on {models_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ rollback


def notify(publish: Publisher | None, manifest: ModelManifest) -> tuple[bool, str | None]:
    """Send the model-update message; a failure is logged, not raised (current has moved; workers poll it)."""
    if publish is None:
        return False, None
    try:
        publish(manifest)
    except Exception as error:  # noqa: BLE001 - the pointer already moved; the worker's poller picks it up
        text = " ".join(str(error).split()) or type(error).__name__
        log.error("model %s is current but the model-update message failed: %s", manifest.version, text)
        return False, text
    return True, None


def rollback(models_dir: Path, version: str, publish: Publisher | None = None) -> tuple[str | None, bool]:
    """Move ``current`` to an existing, loadable ``version``; returns (previous current, message sent).

    Refuses (ValueError) a version that is not a published version directory of ``models_dir`` (rejected
    candidates included) or whose artifact does not load.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"no models directory {models_dir}")
    if version not in list_versions(models_dir):
        raise ValueError(f"no model version {version!r} in {models_dir} (see 'streamrec models list')")
    with models_lock(models_dir):
        artifact = load_artifact(models_dir / version)  # a broken version must never become current
        previous = current_version(models_dir)
        set_current(models_dir, version)
        if previous != version:
            append_history(models_dir, version, previous, "rollback")
    log.info("current moved from %s to %s (rollback)", previous, version)
    sent, _ = notify(publish, artifact.manifest)
    return previous, sent


# ------------------------------------------------------------------------------------------------ retention


def apply_retention(models_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never current nor the one it replaced; same for rejected/.

    Returns the deleted version names (rejected ones as ``rejected/<version>``). A version directory is
    renamed to a hidden name first, so it disappears atomically from listings.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    protected = {name for name in (current_version(models_dir), replaced_version(models_dir)) if name}
    deleted: list[str] = []
    versions = versions_by_age(models_dir)
    for name in versions[: max(0, len(versions) - keep)]:
        if name not in protected:
            _delete(models_dir, name)
            deleted.append(name)
    rejected_dir = models_dir / REJECTED_DIR
    rejected = versions_by_age(rejected_dir)
    for name in rejected[: max(0, len(rejected) - keep)]:
        _delete(rejected_dir, name)
        deleted.append(f"{REJECTED_DIR}/{name}")
    if deleted:
        log.info("retention (keep %d): deleted %s", keep, ", ".join(deleted))
    return deleted


def _delete(directory: Path, name: str) -> None:
    doomed = directory / f".deleting-{name}-{secrets.token_hex(4)}"
    os.rename(directory / name, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ listing


def describe_versions(
    models_dir: Path, metrics: Sequence[str], include_rejected: bool = False
) -> list[dict[str, Any]]:
    """One row per version (oldest first): version, created, n_items, gate decision, ``metrics``, current mark."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"no models directory {models_dir}")
    current = current_version(models_dir)
    places: list[tuple[Path, str]] = [(models_dir, name) for name in versions_by_age(models_dir)]
    if include_rejected:
        places += [(models_dir / REJECTED_DIR, name) for name in versions_by_age(models_dir / REJECTED_DIR)]
    rows = []
    for directory, name in places:
        row: dict[str, Any] = {"version": name, "current": directory == models_dir and name == current,
                               "rejected": directory != models_dir}
        try:
            manifest = ModelManifest.model_validate_json((directory / name / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as error:
            row["error"] = " ".join(str(error).split())[:200]
            rows.append(row)
            continue
        gate = manifest.gate or {}
        row.update(
            created=_iso(manifest.created_at),
            n_items=manifest.n_items,
            parent=manifest.parent_version,
            decision=gate.get("decision", "-"),
            **{metric: _metric(manifest, metric) for metric in metrics},
        )
        rows.append(row)
    return rows


def _metric(manifest: ModelManifest, name: str) -> float | None:
    """The candidate's metric on the whole gate set, else the validation metric of a `streamrec train` version."""
    value = manifest.metrics.get(f"gate_{name}", manifest.metrics.get(f"valid_{name}"))
    return None if value is None else float(value)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if math.isfinite(stamp) else str(stamp)
