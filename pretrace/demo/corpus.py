"""The demo pretraining corpus: a few thousand Dolma-style documents in several shard files.

Its mix mirrors the question of Ruis et al. (2024) at toy scale: bulk code and prose,
factual documents whose facts the factual queries ask for, procedural documents (worked
solutions) for the reasoning tasks, documents that state results without a procedure, tables of
the one-operation sums those solutions write (`math_table`), and planted facts about fictional
people, each stated a known number of times (`planted`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from pretrace.demo import facts, procedures
from pretrace.demo.files import write_records
from pretrace.demo.library_text import Record, code_documents, prose_documents
from pretrace.demo.planted import planted_documents
from pretrace.demo.planted_reasoning import planted_reasoning_documents

SHARD_NAMES = (
    "demo-00.jsonl",
    "demo-01.jsonl.gz",
    "demo-02.parquet",
    "demo-03.jsonl",
    "demo-04.jsonl.gz",
    "demo-05.parquet",
)
N_CODE, N_PROSE, N_CITIES = 250, 180, 100
N_PROCEDURES, N_RESULTS = 450, 80  # per task
TABLE_ROWS, LIST_ITEMS = 5, 8
OPERATIONS_PER_TABLE = 20


def _groups(items: Sequence[facts.Country], size: int) -> list[Sequence[facts.Country]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _fact_records(rng: random.Random) -> list[Record]:
    """Every country in one or two single-country wordings, plus tables, lists and cities; each
    fact of a well-known country also as a sentence of its own, as a query asks it (a fact seen
    only mid-entry is not recalled from the start of a text by the demo's small model)."""
    well_known = set(facts.well_known())
    records: list[Record] = [
        {
            "id": f"facts/sentence/{relation}/{c.code}",
            "text": "".join(facts.fact(c, relation)),
            "source": "facts",
            "style": "sentence",
            "country": c.code,
        }
        for c in facts.well_known()
        for relation in facts.RELATIONS
    ]
    for c in facts.countries():
        texts = {"encyclopedia": facts.encyclopedia(c, rng), "qa": facts.question_answer(c)}
        styles = list(texts) if c in well_known else [rng.choice(list(texts))]
        records += [
            {
                "id": f"facts/{s}/{c.code}",
                "text": texts[s],
                "source": "facts",
                "style": s,
                "country": c.code,
            }
            for s in styles
        ]
    shuffled = list(facts.countries())
    rng.shuffle(shuffled)
    records += [
        {"id": f"facts/table/{i}", "text": facts.table(rows), "source": "facts", "style": "table"}
        for i, rows in enumerate(_groups(shuffled, TABLE_ROWS))
    ]
    for continent in sorted(facts.CONTINENTS.values()):
        members = [c for c in facts.countries() if c.continent == continent]
        records += [
            {
                "id": f"facts/list/{continent}/{i}",
                "text": facts.capitals_list(continent, rows),
                "source": "facts",
                "style": "list",
            }
            for i, rows in enumerate(_groups(members, LIST_ITEMS))
        ]
    cities = rng.sample(facts.large_cities(), N_CITIES)
    records += [
        {
            "id": f"facts/city/{i}",
            "text": facts.city_entry(city, rng),
            "source": "facts",
            "style": "city",
            "country": city.country.code,
        }
        for i, city in enumerate(cities)
    ]
    return records


def _math_records(rng: random.Random) -> list[Record]:
    """Worked solutions in every style and bare results, on problems never used by queries."""
    records: list[Record] = []
    for task in procedures.TASKS:
        problems = procedures.sample_problems(task, N_PROCEDURES + N_RESULTS, rng, held_out=False)
        for i, p in enumerate(problems[:N_PROCEDURES]):
            style = procedures.STYLES[i % len(procedures.STYLES)]
            records.append(
                {
                    "id": f"math_procedure/{task}/{i}",
                    "text": procedures.render_procedure(p, style, rng),
                    "source": "math_procedure",
                    "task": task,
                    "style": style,
                    "problem": p.key,
                }
            )
        records += [
            {
                "id": f"math_result/{task}/{i}",
                "text": p.result(rng),
                "source": "math_result",
                "task": task,
                "problem": p.key,
            }
            for i, p in enumerate(problems[N_PROCEDURES:])
        ]
    return records


def _table_records(rng: random.Random) -> list[Record]:
    """Every one-operation equation the reasoning tasks write, shuffled into short tables."""
    operations = list(
        dict.fromkeys(op for task in procedures.TASKS for op in procedures.elementary_operations(task, rng))
    )
    rng.shuffle(operations)
    return [
        {
            "id": f"math_table/{i}",
            "text": "\n".join(operations[start : start + OPERATIONS_PER_TABLE]),
            "source": "math_table",
        }
        for i, start in enumerate(range(0, len(operations), OPERATIONS_PER_TABLE))
    ]


def build_demo_corpus(out_dir: Path, *, seed: int = 0) -> list[Path]:
    """Write the demo corpus, shuffled across SHARD_NAMES in out_dir, and return the shard paths.

    Each part draws from its own seeded generator, so the files are byte-identical for a seed.
    """
    records = [
        *code_documents(N_CODE, random.Random(f"{seed}:code")),
        *prose_documents(N_PROSE, random.Random(f"{seed}:prose")),
        *_fact_records(random.Random(f"{seed}:facts")),
        *_math_records(random.Random(f"{seed}:math")),
        *_table_records(random.Random(f"{seed}:tables")),
        *planted_documents(seed),
        *planted_reasoning_documents(seed),
    ]
    random.Random(f"{seed}:shards").shuffle(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(SHARD_NAMES)
    return [write_records(out_dir / name, records[i::n]) for i, name in enumerate(SHARD_NAMES)]
