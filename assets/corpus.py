"""corpus_files (the user's files, observed) and corpus_shards (tokenized Parquet)."""


import time
from collections import Counter

import dagster as dg

from pretrace.corpus import CorpusFile, list_corpus_files, read_records, shard_key, tokenize_documents
from pretrace.model import load_tokenizer
from resources.settings import InfluenceResource, ModelResource, StorageResource

from .common import MODEL_INFO_KEY, artefact_metadata, markdown_preview, shard_key_of
from .partitions import PER_SHARD, shard_partitions


def corpus_by_shard(corpus: str) -> dict[str, CorpusFile]:
    return {shard_key(f.name): f for f in list_corpus_files(corpus)}


@dg.observable_source_asset(
    partitions_def=shard_partitions,
    group_name="corpus",
    description="The raw corpus files (JSONL, JSONL.gz, Parquet); one `shard` partition per file.",
)
def corpus_files(context: dg.AssetExecutionContext, influence: InfluenceResource) -> dg.DataVersionsByPartition:
    """Register a partition for every file and version each by its change token (mtime/ETag)."""
    files = corpus_by_shard(influence.corpus)
    known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    new = sorted(set(files) - known)
    if new:
        context.instance.add_dynamic_partitions(shard_partitions.name, new)
        context.log.info(f"registered {len(new)} new shard(s): {', '.join(new)}")
    return dg.DataVersionsByPartition({key: f.token for key, f in files.items()})


@dg.asset(
    **PER_SHARD,
    deps=[corpus_files, "model"],
    group_name="corpus",
    kinds={"parquet"},
    code_version="1",
)
def corpus_shards(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    influence: InfluenceResource,
    model_settings: ModelResource,
) -> dg.MaterializeResult:
    """Tokenized documents of one corpus file; long documents are split into traceable chunks."""
    started = time.monotonic()
    shard = context.partition_key
    files = corpus_by_shard(influence.corpus)
    if shard not in files:
        raise dg.Failure(f"shard {shard!r}: its file is no longer in {influence.corpus}")
    file = files[shard]
    store = storage.open()
    info = store.read_json(MODEL_INFO_KEY)
    tokenizer = load_tokenizer(info["path"], trust_remote_code=model_settings.trust_remote_code)
    max_length = min(influence.max_length, info["max_context"] or influence.max_length)
    table = tokenize_documents(read_records(file.url), tokenizer, max_length, origin=file.url)
    key = shard_key_of("corpus_shards", shard, "parquet")
    store.write_parquet(key, table)
    sources = Counter(table.column("source").to_pylist())
    return dg.MaterializeResult(
        metadata={
            **artefact_metadata(store, key, started=started),
            "file": file.url,
            "file_token": file.token,
            "documents": len(set(table.column("parent_id").to_pylist())),
            "chunks": table.num_rows,
            "tokens": sum(table.column("n_tokens").to_pylist()),
            "sources": dg.MetadataValue.json(dict(sources)),
            "dagster/row_count": table.num_rows,
            "preview": markdown_preview(table, ["doc_id", "source", "n_tokens", "text"]),
        },
    )
