"""Models named by their Hugging Face id (`org/name`), found offline in the local Hugging Face
cache: pretrace never downloads at run time, but a model a user has downloaded once (with
`huggingface-cli download` or transformers) is used where it lies, at its cached main revision.
"""

from __future__ import annotations

from pathlib import Path

from pretrace.config import HUB_ID
from pretrace.errors import InputError


def checkpoint_folder(path: str) -> str:
    """Where the checkpoint ``path`` lies: itself, or for a Hugging Face id that is no folder
    here, the cached snapshot of its main revision (a folder named by the commit)."""
    if "://" in path or not HUB_ID.fullmatch(path) or Path(path).is_dir():
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(path, local_files_only=True)
    except LocalEntryNotFoundError:
        raise InputError(
            f"model: {path} is neither a folder nor a model in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); download it once (huggingface-cli download {path}) or give the folder "
            "saved with save_pretrained"
        ) from None


def hub_revision(path: str) -> str | None:
    """The commit of a Hugging Face id's cached snapshot (None for a folder or URL)."""
    folder = checkpoint_folder(path)
    return Path(folder).name if folder != path else None
