"""Every input checked before the first forward pass, every problem reported at once.

A mistake in the queries file or in the last corpus file should not surface after an hour of
EK-FAC fitting, one mistake per rerun. `preflight` reads the checkpoint's configuration and
tokenizer (no weights unless asked), every query, and the records of every corpus file whose
shard is not current, and gathers what is wrong into one `InputErrors`: one line per problem,
each naming the file (and line, record or key) and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pretrace.analyses.completions import room_to_answer
from pretrace.config import PretraceConfig
from pretrace.errors import InputError, InputErrors
from pretrace.inputs.corpus import CorpusFile, read_records
from pretrace.inputs.query_file import Query, encode_query, queries_from_table, read_queries
from pretrace.model.adapter import context_of, load_model, open_checkpoint
from pretrace.project.provenance import Project


@dataclass
class Findings:
    """What preflight found: problems stop the run, warnings (skipped files) do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def check(self, step: Callable[[], object]) -> object | None:
        """Run one check; its InputError becomes a problem (its lines, if it holds several), once
        (the queries file is checked with every compared model's tokenizer)."""
        try:
            return step()
        except InputErrors as exc:
            found = exc.problems
        except InputError as exc:
            found = [str(exc)]
        self.problems.extend(p for p in found if p not in self.problems)
        return None


def preflight(
    project: Project, *, load_weights: bool = False, progress: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Check the project's inputs; return the warnings, raise `InputErrors` with every problem.

    ``load_weights`` also loads the checkpoint on the CPU to verify its LM head and causal
    attention (the `model` asset does this anyway, first, before any backward pass).
    """
    found = Findings()
    config = project.config
    found.check(project.storage.check_writable)
    storage_readable = not found.problems  # else no stored artefact can be consulted
    for _, owner in project.projects():  # each compared model's checkpoint and its tokenizer on the queries
        tokenizer, context = None, None
        if not project.demo:  # the demo's model and tokenizer are trained by the pipeline itself
            progress(f"checking the checkpoint {owner.config.model}")
            tokenizer, context = found.check(lambda owner=owner: _checkpoint(owner.config, load_weights)) or (
                None,
                None,
            )
        progress(f"checking the queries in {config.queries}")
        _check_queries(found, owner.config, tokenizer, context)
    corpus = found.check(lambda: project.corpus)
    if corpus is not None:
        found.warnings.extend(f"{config.corpus}: skipped {entry}" for entry in project.left_out)
        found.check(lambda: project.fit_shards)
        pending = [s for s in project.shards if load_weights or not (storage_readable and _tokenized(project, s))]
        progress(f"checking the records of {len(pending)} corpus file(s)")
        for shard in pending:
            found.check(lambda shard=shard: _check_corpus_file(corpus[shard]))
    if found.problems:
        raise InputErrors(found.problems)
    return found.warnings


def _checkpoint(config: PretraceConfig, load_weights: bool) -> tuple[object, int | None]:
    """The tokenizer and context of a checkpoint whose configuration, weight files and
    vocabulary are usable (and weights, with ``load_weights``)."""
    if load_weights:
        lm = load_model(config.model, layers=config.layers, device="cpu", **config.loading)
        return lm.tokenizer, lm.max_context
    checkpoint = open_checkpoint(config.model, **config.loading)
    return checkpoint.tokenizer, context_of(checkpoint.config)


def _tokenized(project: Project, shard: str) -> bool:
    """A shard whose tokens are current was checked when it was tokenized."""
    return "corpus_shards" in project.graph and project.status("corpus_shards", shard).current


def _check_queries(found: Findings, config: PretraceConfig, tokenizer: object | None, context: int | None) -> None:
    table = found.check(lambda: read_queries(config.queries))
    if table is None or tokenizer is None:
        return
    for query in queries_from_table(table):
        found.check(
            lambda query=query: _in_file(
                config.queries, lambda: _query_fits(query, config.completion_instruction, tokenizer, context)
            )
        )


def _query_fits(query: Query, instruction: str | None, tokenizer: object, context: int | None) -> None:
    """The query fits the context: with its completion, or leaving the model room to write one."""
    if query.completion:
        encode_query(query, tokenizer, context)
    else:
        prompt = tokenizer(query.prompt + (instruction or ""), add_special_tokens=True)["input_ids"]
        room_to_answer(query.id, len(prompt), 1, context)


def _check_corpus_file(file: CorpusFile) -> None:
    """Every record of the file reads and some has text; a problem names the way to go on without it."""
    try:
        if not sum(1 for record in read_records(file.url) if record["text"].strip()):
            raise InputError(f"{file.url}: every document's `text` is empty; add text or remove the file")
    except InputError as exc:
        raise InputError(f"{exc} (or list {file.name} in `exclude_files` to go on without it)") from None


def _in_file(url: str, step: Callable[[], object]) -> object:
    """Prefix a record-level error with the file it comes from."""
    try:
        return step()
    except InputError as exc:
        raise InputError(f"{url}: {exc}") from None
