"""What a study plan reads before anything is downloaded or run: the model's config.json (no weights,
no tokenizer needed) and the corpus's size in documents and tokens.

The corpus is counted, in order of preference, from `--documents` (and `--tokens-per-document`),
else from its files' bytes: tokens = bytes / bytes-per-token, measured with the model's tokenizer
on a sample of the first file when the model folder has one, else `--bytes-per-token` (default
`DEFAULT_BYTES_PER_TOKEN`). A stored document is a chunk of at most `max_length` tokens; the
sample also gives the mean tokens a chunk, else chunks are taken as full.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrace.errors import InputError
from pretrace.inputs.corpus import list_corpus_files, read_records
from pretrace.model.adapter import causal_config
from pretrace.model.hub_cache import checkpoint_folder
from pretrace.store.storage import open_fs

DEFAULT_BYTES_PER_TOKEN = 4.0
"""English prose through a 32k to 256k-entry BPE vocabulary: about 4 bytes of UTF-8 a token."""
SAMPLE_RECORDS = 200
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def model_configuration(path: str, trust_remote_code: bool = False) -> Any:
    """The model's configuration from its config.json alone, refused unless it is a causal LM's
    (as a load would be): a local folder's, or that one file copied from a URL (the weights stay
    where they are)."""
    fs, folder = open_fs(checkpoint_folder(path))  # a Hugging Face id: its cached snapshot
    source = f"{folder.rstrip('/')}/config.json"
    if not fs.exists(source):
        raise InputError(f"model: {path} has no config.json; save the model with save_pretrained")
    if "://" not in path:
        return causal_config(Path(folder), path, trust_remote_code)
    with tempfile.TemporaryDirectory() as copy:
        fs.get_file(source, f"{copy}/config.json")
        return causal_config(Path(copy), path, trust_remote_code)


def local_tokenizer(path: str) -> Any | None:
    """The model folder's tokenizer when it is a local folder that has one, else None."""
    folder = Path(checkpoint_folder(path))
    if "://" in path or not any((folder / name).exists() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@dataclass(frozen=True)
class CorpusSize:
    documents: int  # stored documents: chunks of at most max_length tokens
    tokens_per_document: int
    counted: str  # how, for the plan's output

    @property
    def tokens(self) -> int:
        return self.documents * self.tokens_per_document


def corpus_size(
    corpus: str,
    max_length: int,
    *,
    documents: int | None = None,
    tokens_per_document: int | None = None,
    bytes_per_token: float | None = None,
    tokenizer: Any | None = None,
) -> CorpusSize:
    """The corpus's documents and tokens (module docstring)."""
    if documents is not None:
        per = tokens_per_document or max_length
        return CorpusSize(documents, per, f"--documents {documents:,} x {per:,} tokens")
    if tokens_per_document is not None:
        raise InputError("--tokens-per-document: give --documents with it (the corpus's files give their own counts)")
    files = list_corpus_files(corpus).files
    if not files:
        raise InputError(
            f"corpus: {corpus} holds no corpus files; add them, or give --documents and --tokens-per-document"
        )
    size = sum(f.size for f in files)
    per = max_length
    if bytes_per_token is not None:
        how = f"--bytes-per-token {bytes_per_token:g}"
    elif tokenizer is not None:
        bytes_per_token, per = _sampled(tokenizer, files[0].url, max_length)
        how = f"{bytes_per_token:.3g} bytes a token, {per} tokens a document, measured with the tokenizer on {files[0].name}"
    else:
        bytes_per_token, how = (
            DEFAULT_BYTES_PER_TOKEN,
            f"{DEFAULT_BYTES_PER_TOKEN:g} bytes a token (no tokenizer: --bytes-per-token to change)",
        )
    tokens = size / bytes_per_token
    return CorpusSize(
        max(1, math.ceil(tokens / per)),
        per,
        f"{len(files)} files, {size / 1e9:.3g} GB at {how} (compressed files count compressed)",
    )


def _sampled(tokenizer: Any, url: str, max_length: int) -> tuple[float, int]:
    """Bytes a token and mean tokens a stored chunk, over the first `SAMPLE_RECORDS` records of a file."""
    text_bytes = tokens = chunks = 0
    for number, record in enumerate(read_records(url)):
        if number == SAMPLE_RECORDS:
            break
        count = len(tokenizer(record["text"], add_special_tokens=False)["input_ids"])
        text_bytes += len(record["text"].encode())
        tokens += count
        chunks += max(1, math.ceil(count / max_length))
    return text_bytes / max(tokens, 1), max(1, round(tokens / chunks))
