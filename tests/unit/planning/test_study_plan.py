"""The study plan: the cheapest setting against brute force, its time arithmetic, the rates it reads,
and its refusals."""

import itertools
import json
import math
from dataclasses import replace

import pytest

from pretrace.errors import InputError
from pretrace.planning.cheapest import cheapest, settings_lines, study_disk
from pretrace.planning.measured_rates import SCALE_RUN_LAYERS, MeasuredRates, Rate, measured_rates
from pretrace.planning.memory_plan import ModelShape, plan
from pretrace.planning.study_cost import study_estimate
from pretrace.planning.study_inputs import DEFAULT_BYTES_PER_TOKEN, corpus_size
from pretrace.planning.targets import parse_size, target
from pretrace.testing.published_shapes import PAPER_STUDY, PUBLISHED_SHAPES, WIDE_BLOCKS


def rates(score=0.8, fit=8.0, train=40_000.0, parameters=1_100_000_000) -> MeasuredRates:
    def r(value):
        return Rate(value, "gpu-2026-01-01-test.json", "NVIDIA H100 80GB HBM3")

    return MeasuredRates(r(train), parameters, r(score), r(fit), r(30.0), r(24.0))


PAPER = replace(PAPER_STUDY, stored_gradient_dtype="int8")


@pytest.fixture(scope="module")
def shapes() -> dict[str, ModelShape]:
    return {name: ModelShape.of_config(config, ["mlp"]) for name, config in PUBLISHED_SHAPES.items()}


@pytest.mark.parametrize("name", list(PUBLISHED_SHAPES))
def test_the_chosen_setting_is_the_cheapest_that_fits_by_brute_force(name, shapes):
    """Every setting of the grid, planned and timed; the chooser's pick is the one of least time
    among those within the budgets (ties: larger batch, fewer groups, no checkpointing, more bits).
    At 6 TB the 35B's int8 store does not fit, the 7B-class ones' does. Each scoring pass's groups
    are tried at every count for each batch, checkpointing and store (they change only their own
    step and stage), and the least-time count that fits goes with every fitting setting."""
    shape, work = shapes[name], replace(PAPER, factor_block_size=WIDE_BLOCKS.get(name))
    card = "h200-141gb" if name == "Command-R-35B" else "h100-80gb"  # 35B's weights leave 80 GB too little
    budget, measured = target(card, host_memory="400GB", disk="6TB"), rates()
    counts = range(1, len(shape.layers) + 1)

    def least(step: str, own: str, stage: str, **chosen) -> int | None:
        timed = []
        for groups in counts:
            tried = replace(work, **chosen, **{own: groups})
            planned = plan(shape, tried).step(step)
            if planned.device <= budget.device_bytes and planned.host <= 400e9:
                timed.append((round(study_estimate(shape, tried, measured).seconds[stage], 9), groups))
        return min(timed)[1] if timed else None

    best = None
    for batch, checkpointed, dtype in itertools.product((8, 4, 2, 1), (False, True), ("int8", "int4")):
        chosen = dict(batch_size=batch, activation_checkpointing=checkpointed, stored_gradient_dtype=dtype)
        query = least("query_gradients", "query_groups", "query gradients", **chosen)
        documents = least("scores", "document_groups", "document gradients", **chosen)
        if query is None or documents is None:
            continue
        for groups in counts:
            tried = replace(
                work,
                **chosen,
                layer_groups=groups,
                query_groups=query,
                document_groups=documents,
                partitioned_groups=groups > 1,
            )
            planned = plan(shape, tried)
            if (
                max(step.device for step in planned.steps) > budget.device_bytes
                or max(step.host for step in planned.steps) > 400e9
                or study_disk(shape, tried) > 6e12
            ):
                continue
            key = (
                round(study_estimate(shape, tried, measured).gpu_hours, 9),
                -batch,
                groups,
                query,
                documents,
                checkpointed,
                dtype != "int8",
            )
            best = min(best or (key, tried), (key, tried), key=lambda pair: pair[0])
    assert best is not None and best[1].stored_gradient_dtype == ("int4" if name == "Command-R-35B" else "int8")
    assert cheapest(shape, work, budget, measured).work == best[1]


def test_the_estimate_counts_each_stage_in_training_steps_of_the_model(shapes):
    """By hand: 6.74B parameters at 40,000 tokens/s x 1.1B / 6.74B; 3 groups with checkpointing add
    2 x 4/6 + 3 x 2/6 training steps a token to every pass."""
    shape = shapes["Llama-2-7B"]
    work = replace(PAPER, layer_groups=3, activation_checkpointing=True)
    step = shape.parameters / (40_000 * 1.1e9)  # seconds a token
    extra = 2 * 4 / 6 + 3 * 2 / 6
    seconds = study_estimate(shape, work, rates(score=0.8, fit=8.0)).seconds
    assert seconds["fit covariances"] == pytest.approx(250e6 * step * (4.0 + extra))
    assert seconds["eigenvalue corrections"] == seconds["fit covariances"]
    assert seconds["document gradients"] == pytest.approx(2.5e9 * step * (1 / 0.8 + extra))
    ungrouped = study_estimate(shape, replace(work, document_groups=1), rates(score=0.8, fit=8.0)).seconds
    assert ungrouped["document gradients"] == pytest.approx(2.5e9 * step * (1 / 0.8 + 2 / 6))  # its recompute alone
    assert ungrouped["fit covariances"] == seconds["fit covariances"]
    cubes = sum(side**3 for layer in shape.layers.values() for side in layer)
    assert seconds["eigendecomposition"] == pytest.approx(
        30.0 * cubes / sum(s**3 for lay in SCALE_RUN_LAYERS for s in lay)
    )


def test_the_7b_scores_in_one_group_on_80gb_while_fitting_is_grouped_and_the_study_costs_less(shapes):
    """The document pass holds the kept eigenvectors, not the eigenbases: ungrouped on an 80 GB
    card, while the fitting chain needs groups. Scoring in the fitting's groups (as the planner
    once did) repeats the corpus's forward and backward once more a group: by hand, 4/6 of a
    training step a token each."""
    shape, measured = shapes["Llama-2-7B"], rates()
    chosen = cheapest(shape, PAPER, target("h100-80gb"), measured)
    work = chosen.work
    assert work.layer_groups > 1 and work.groups_of("scores") == 1 and not work.activation_checkpointing
    assert (
        plan(shape, replace(work, query_groups=work.groups_of("query_gradients") - 1)).step("query_gradients").device
        > 80e9
    )  # the query pass holds every factor: its own fewest groups
    assert "(fitting; " in settings_lines(work) and "document gradients in 1)" in settings_lines(work)
    alike = study_estimate(shape, replace(work, query_groups=None, document_groups=None), measured)
    step = shape.parameters / (40_000 * 1.1e9)  # seconds a training step takes a token
    saved = alike.seconds["document gradients"] - chosen.estimate.seconds["document gradients"]
    assert saved == pytest.approx(2.5e9 * step * (work.layer_groups - 1) * 4 / 6)
    assert chosen.estimate.gpu_hours < alike.gpu_hours


def test_the_scoring_pass_holds_the_kept_eigenvectors_not_the_eigenbases(shapes):
    shape = shapes["Llama-2-7B"]
    projected = plan(shape, PAPER).step("scores").parts
    per_block = 4 * 3 * (304 * 11008 + 304 * 4096)  # three MLP layers, 11008 x 4096 or its transpose
    assert projected["kept eigenvectors"] == 32 * per_block  # one group: every block's, float32
    assert (
        "eigenbases" not in projected
        and "kept eigenvectors" not in plan(shape, replace(PAPER, projection=None)).step("scores").parts
    )


def test_a_store_that_cannot_fit_the_disk_is_refused_with_the_projection_that_would(shapes):
    shape = shapes["Llama-2-7B"]
    exact = replace(PAPER, projection=None, document_rank=None, stored_gradient_dtype="float32")
    assert study_disk(shape, exact) > 1e16  # tens of petabytes
    with pytest.raises(InputError, match=r"set projection: \[(\d+), \1\] in pretrace.yaml") as refused:
        cheapest(shape, exact, target("h100-80gb"), rates())
    k = int(refused.value.args[0].split("set projection: [")[1].split(",")[0])
    assert (
        study_disk(shape, replace(exact, projection=(k, k)))
        <= 1e15
        < study_disk(shape, replace(exact, projection=(k + 1, k + 1)))
    )


def test_a_step_beyond_the_host_memory_is_refused_with_what_it_needs(shapes):
    shape = shapes["Llama-2-7B"]  # its query gradients step loads every layer's factors: 70 GB
    with pytest.raises(InputError, match=r"the query_gradients step needs 7\d.\d GB of host memory .* gives 51.5 GB"):
        cheapest(shape, PAPER, target("h100-80gb", host_memory="48GiB"), rates())
    chosen = cheapest(shape, PAPER, target("h100-80gb", host_memory="80GB"), rates())
    assert max(step.host for step in chosen.plan.steps) <= 80e9


def test_the_newest_usable_result_file_gives_each_rate_and_the_cards_own_its_training_rate(tmp_path):
    base = {
        "parameters": 1_100_048_384,
        "tf32": False,
        "train_step_tokens_per_s": 1.0,
        "factor_passes_vs_train_step": 30.0,
    }
    base |= {"score_vs_train_step_tokens_per_s": 0.1, "eigendecomposition_seconds": 9.0, "query_gradients_seconds": 9.0}
    files = {
        "gpu-2026-01-01-h100.json": {**base, "device": "NVIDIA H100", "train_step_tokens_per_s": 100.0},
        "gpu-2026-02-01-h200.json": {**base, "device": "NVIDIA H200", "train_step_tokens_per_s": 200.0},
        "gpu-2026-03-01-h200-tf32.json": {
            **base,
            "device": "NVIDIA H200",
            "tf32": True,
            "factor_passes_vs_train_step": 1.0,
        },
        "gpu-2026-03-02-h200-quick.json": {**base, "device": "NVIDIA H200", "parameters": 19_000_000},
        "gpu-2026-02-15-h200-resident.json": {
            **base,
            "device": "NVIDIA H200",
            "score_resident_vs_train_step_tokens_per_s": 0.8,
        },
    }
    for name, figures in files.items():
        (tmp_path / name).write_text(json.dumps(figures))
    on_h100, on_any = measured_rates("H100", tmp_path), measured_rates(None, tmp_path)
    assert (on_h100.train_tokens_per_s.value, on_h100.train_tokens_per_s.source) == (100.0, "gpu-2026-01-01-h100.json")
    assert on_any.train_tokens_per_s.source == "gpu-2026-02-15-h200-resident.json"  # newest usable: not tf32, not quick
    assert (on_h100.score_vs_train.value, on_h100.score_vs_train.card) == (0.8, "NVIDIA H200")
    assert on_h100.fit_vs_train.value == 30.0
    assert on_h100.train_tokens_per_s_at(2_200_096_768) == 50.0  # 6 x parameters FLOPs a token
    with pytest.raises(
        InputError, match="no GPU result file in .* holds train_step_tokens_per_s; run `python -m bench.gpu"
    ):
        measured_rates("H100", tmp_path / "nothing")


def test_targets_and_sizes():
    assert target("H100-80GB").device_bytes == 80e9 and target("h200-141gb").card == "H200"
    assert target("96GB").device_bytes == 96e9 and target("96GB").card is None
    assert parse_size("2TiB", "--disk") == 2 * 2**40 and parse_size("256", "--host-memory") == 256e9
    with pytest.raises(InputError, match=r"--gpu: 'a100' is neither a card \(h100-80gb, h200-141gb\) nor a size"):
        target("a100")
    with pytest.raises(InputError, match=r"--disk: '20 TBs' is not a size; give e.g. 80GB"):
        target("h100-80gb", disk="20 TBs")


class WordTokenizer:
    """A token a space-separated word: counts a hand can check."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_the_corpus_is_counted_from_its_bytes_at_the_tokenizers_rate_or_the_stated_one(tmp_path):
    texts = ["aaa " * 10, "bb " * 30]  # 40 and 90 bytes; 10 and 30 words
    (tmp_path / "part.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )
    size = (tmp_path / "part.jsonl").stat().st_size
    stated = corpus_size(str(tmp_path), 16, bytes_per_token=2.0)
    assert (stated.documents, stated.tokens_per_document) == (math.ceil(size / 2 / 16), 16)  # full chunks
    assert corpus_size(str(tmp_path), 16).documents == math.ceil(size / DEFAULT_BYTES_PER_TOKEN / 16)
    sampled = corpus_size(str(tmp_path), 16, tokenizer=WordTokenizer())
    # 130 text bytes over 40 words; chunks of at most 16 words: 1 + 2, so 40 / 3 = 13 tokens a chunk
    assert sampled.tokens_per_document == 13 and sampled.documents == math.ceil(size / (130 / 40) / 13)
    given = corpus_size(str(tmp_path / "absent"), 16, documents=1000, tokens_per_document=300)
    assert given.tokens == 300_000 and "--documents 1,000 x 300 tokens" in given.counted
