"""A private local copy of a remote checkpoint, keyed by the remote objects' fingerprint and
verified by content on every use.

transformers loads from a local folder, so an s3:// checkpoint is copied first. The copy lives
in the user's own cache folder (`pretrace.store.fingerprint.cache_folder`, mode 0700), never in a
shared temporary path where another local user could plant a checkpoint to be loaded in its
place. Each copy records the SHA-256 of every file it downloaded; a copy whose files no longer
match (edited, truncated, planted) is deleted and downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from pretrace.errors import InputError
from pretrace.model.hub_cache import checkpoint_folder
from pretrace.store.fingerprint import cache_folder, private_folder, shared_cache, tree_fingerprint
from pretrace.store.storage import open_fs

FILES_RECORD = ".pretrace-files.json"


def local_checkpoint(path: str) -> Path:
    """A local folder holding the checkpoint at ``path`` (a folder, an fsspec URL, or a Hugging
    Face id in the local cache)."""
    path = checkpoint_folder(path)
    if "://" not in path or path.startswith("file://"):
        local = Path(path.removeprefix("file://")).expanduser()
        if not local.is_dir():
            raise InputError(f"model: {path} is not a directory; give a checkpoint saved with save_pretrained")
        return local
    try:
        fingerprint = tree_fingerprint(path, shared_cache())
    except FileNotFoundError:
        raise InputError(f"model: no files under {path}; upload a save_pretrained directory") from None
    except Exception as exc:  # network, credentials, missing bucket
        raise InputError(f"model: could not list {path}: {exc}") from exc
    root = private_folder(private_folder(cache_folder()) / "models")
    copy = root / hashlib.sha256(f"{path}\n{fingerprint}".encode()).hexdigest()[:16]
    if copy.exists():
        if intact(copy):
            return copy
        shutil.rmtree(copy)
    staging = _download(path, root)
    if not copy.exists():
        staging.rename(copy)
    else:  # another process finished the same download first
        shutil.rmtree(staging)
    return copy


def intact(folder: Path) -> bool:
    """Whether the folder holds exactly the files it downloaded, byte for byte."""
    try:
        recorded = json.loads((folder / FILES_RECORD).read_text())
    except (OSError, ValueError):
        return False
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {FILES_RECORD}
    if present != set(recorded):
        return False
    digests = shared_cache()
    return all(digests.digest(str(folder / name)) == digest for name, digest in recorded.items())


def _download(path: str, root: Path) -> Path:
    """The checkpoint's files in a new staging folder under ``root``, sizes checked against the
    listing, with the record of their digests written last."""
    fs, remote = open_fs(path)
    remote = remote.rstrip("/")
    try:
        listing = {
            name[len(remote) :].lstrip("/"): int(info["size"]) for name, info in fs.find(remote, detail=True).items()
        }
        if "config.json" not in listing:
            raise InputError(f"model: no config.json under {path}; upload a save_pretrained directory")
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        fs.get(remote + "/", str(staging), recursive=True)
    except InputError:
        raise
    except Exception as exc:  # network, credentials, missing bucket
        raise InputError(f"model: could not download {path}: {exc}") from exc
    for name, size in listing.items():
        local = staging / name
        if not local.is_file() or local.stat().st_size != size:
            shutil.rmtree(staging)
            raise InputError(f"model: {path}/{name} was not downloaded whole (or changed meanwhile); rerun")
    digests = shared_cache()
    record = {name: digests.digest(str(staging / name)) for name in sorted(listing)}
    (staging / FILES_RECORD).write_text(json.dumps(record, indent=1))
    return staging
