"""corpus_files (the user's files, observed) and corpus_shards (tokenized Parquet)."""

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import dagster as dg

from pretrace.inputs.corpus import read_records, tokenize_documents
from pretrace.resources.pretrace import PretraceResource

from .checks import check_specs
from .common import RETRY, computing, materialized, say, table_preview, user_errors
from .partitions import PER_SHARD, shard_partitions


@dg.observable_source_asset(
    partitions_def=shard_partitions,
    group_name="corpus",
    description="The raw corpus files (JSONL, JSONL.gz, Parquet); one `shard` partition per file, "
    "versioned by its content (SHA-256 locally, ETag on S3).",
)
def corpus_files(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.DataVersionsByPartition:
    """Register a partition for every file and version each by its content fingerprint."""
    with user_errors():
        project = pretrace.project()
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        new = [s for s in project.shards if s not in known]
        if new:
            context.instance.add_dynamic_partitions(shard_partitions.name, new)
            context.log.info(f"registered {len(new)} new shard(s): {', '.join(new)}")
        for entry in project.listing.skipped:
            say(context, f"{project.config.corpus}: skipped {entry}", logging.WARNING)
        return dg.DataVersionsByPartition({s: project.source("corpus_file", s) for s in project.shards})


def counted(records: Iterable[dict], counter: Counter) -> Iterator[dict]:
    """The records, counting them into counter["read"] as they stream past."""
    for record in records:
        counter["read"] += 1
        yield record


@dg.asset(
    **PER_SHARD,
    deps=[corpus_files, "model"],
    group_name="corpus",
    kinds={"parquet"},
    retry_policy=RETRY,
    check_specs=check_specs("corpus_shards"),
)
def corpus_shards(context: dg.AssetExecutionContext, pretrace: PretraceResource) -> dg.MaterializeResult:
    """Tokenized documents of one corpus file; long documents are split into traceable chunks."""
    started = time.monotonic()
    with computing(context, pretrace) as run:
        file = run.project.corpus[run.shard]
        info = run.model_info
        max_length = min(run.project.config.max_length, info["max_context"] or run.project.config.max_length)
        records = Counter()
        table = tokenize_documents(
            counted(read_records(file.url), records), run.tokenizer(), max_length, origin=file.url
        )
        manifest = run.commit({"{shard}.parquet": table})
    sources = Counter(table.column("source").to_pylist())
    documents = len(set(table.column("parent_id").to_pylist()))
    if documents < records["read"]:
        say(
            context,
            f"{records['read'] - documents} document(s) of {file.url} have no text to score (empty or "
            "shorter than 2 tokens) and are left out",
            logging.WARNING,
        )
    return materialized(
        run,
        manifest,
        started,
        file=file.url,
        documents=documents,
        empty_documents=records["read"] - documents,
        chunks=table.num_rows,
        tokens=sum(table.column("n_tokens").to_pylist()),
        sources=dg.MetadataValue.json(dict(sources)),
        **{"dagster/row_count": table.num_rows},
        preview=table_preview(table, ["doc_id", "source", "n_tokens", "text"]),
    )
