"""The memory plan against allocations measured on the same tiny model, and its refusals."""

import itertools
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pretrace.config import PretraceConfig
from pretrace.errors import InputError
from pretrace.influence.document_gradients import compute_document_gradients
from pretrace.influence.ekfac import BlockDiagonalSum, eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.influence.projection import KroneckerProjection
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.planning.cheapest import fitting_plan
from pretrace.planning.memory_plan import ModelShape, Workload, plan, suggestion
from pretrace.planning.peak_memory import PeakAllocations
from pretrace.project.device_plan import device_plan, workload

CONFIG = LlamaConfig(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    tie_word_embeddings=False,
)


def test_the_meta_model_gives_the_real_shapes():
    torch.manual_seed(0)
    real = wrap_model(LlamaForCausalLM(CONFIG), layers=["mlp"], device="cpu")
    shape = ModelShape.of_config(CONFIG, ["mlp"])
    assert shape.parameters == sum(p.numel() for p in real.model.parameters())
    assert shape.layers == real.layer_shapes() and shape.kv_hidden == 64


@pytest.mark.parametrize("checkpointed", [False, True])
def test_each_step_is_planned_within_a_fifth_of_what_it_allocates(checkpointed):
    torch.manual_seed(0)
    lm = wrap_model(
        LlamaForCausalLM(CONFIG).eval(), layers=["mlp"], device="cpu", activation_checkpointing=checkpointed
    )
    B, T, Q = 4, 32, 6
    docs = [torch.randint(3, 256, (T,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2 * B)]
    work = Workload(
        batch_size=B,
        max_length=T,
        documents=len(docs),
        queries=Q,
        query_length=T,
        device="cpu",
        activation_checkpointing=checkpointed,
    )
    planned = plan(ModelShape.of_config(CONFIG, ["mlp"]), work)

    def data():
        return (b for _, b in batches(docs, B, 0))

    fit_covariances(lm, data())  # first calls allocate lasting caches; measure the steady state
    measured = {}
    with PeakAllocations() as m:
        cov = fit_covariances(lm, data())
    measured["covariances"] = m.peak
    basis = eigenbasis(cov)
    with PeakAllocations() as m:
        lambdas = fit_lambdas(lm, basis, data())
    measured["lambdas"] = m.peak
    with PeakAllocations() as m:
        queries = query_gradients_from_tokens(
            lm, make_factors(basis, lambdas), docs[:Q], [T // 2] * Q, [str(i) for i in range(Q)], batch_size=B
        )
    measured["query_gradients"] = m.peak
    with PeakAllocations() as m:
        stream_scores(lm, queries, docs, batch_size=B)
    measured["scores"] = m.peak
    for name, peak in measured.items():
        step = planned.step(name)
        expected = step.allocated  # the weights, factors and query gradients existed before the measurement
        assert abs(expected - peak) <= 0.2 * peak, (name, expected, peak)


def test_block_diagonal_covariances_are_planned_and_shrink_the_eigendecomposition_to_a_block():
    torch.manual_seed(0)
    lm = wrap_model(LlamaForCausalLM(CONFIG).eval(), layers=["mlp"], device="cpu")
    B, T = 4, 32
    docs = [torch.randint(3, 256, (T,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2 * B)]

    def data():
        return (b for _, b in batches(docs, B, 0))

    shape = ModelShape.of_config(CONFIG, ["mlp"])
    work = Workload(batch_size=B, max_length=T, documents=len(docs), device="cpu", factor_block_size=64)
    fit_covariances(lm, data(), block_size=64)
    with PeakAllocations() as m:
        fit_covariances(lm, data(), block_size=64)
    planned = plan(shape, work).step("covariances").allocated
    assert abs(planned - m.peak) <= 0.2 * m.peak, (planned, m.peak)
    basis = eigenbasis(fit_covariances(lm, data(), block_size=64), block_size=64)
    with PeakAllocations() as m:  # the eigenbases' blocks: views of the loaded squares on a CPU
        fit_lambdas(lm, basis, data(), block_size=64)
    planned = plan(shape, work).step("lambdas").allocated
    assert abs(planned - m.peak) <= 0.2 * m.peak, (planned, m.peak)
    # the widest side (352) in blocks of at most 64: the decomposition's matrices are 64 wide, not 352
    whole = plan(shape, Workload(batch_size=B, max_length=T, device="cpu")).step("eigenbasis").device
    assert plan(shape, work).step("eigenbasis").device * (352 / 64) ** 2 == pytest.approx(whole)


@pytest.mark.parametrize(
    "projection, rank, dtype",
    [
        (None, None, "float32"),
        ((8, 8), None, "bfloat16"),
        ((8, 8), 2, "float32"),
        ((8, 7), None, "int4"),
        (None, None, "int8"),
        ((8, 8), 3, "int4"),
        ((500, 7), 3, "int8"),
        ((500, 500), None, "int4"),
    ],
)
def test_the_planned_gradient_store_is_the_bytes_the_document_gradients_hold(projection, rank, dtype):
    torch.manual_seed(0)
    lm = wrap_model(LlamaForCausalLM(CONFIG).eval(), layers=["mlp"], device="cpu")
    docs = [torch.randint(3, 256, (16,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(6)]
    built = projection and KroneckerProjection.build(lm.layer_shapes(), *projection, seed=0, basis="raw")
    stored = compute_document_gradients(
        lm, docs, [str(i) for i in range(6)], projection=built, rank=rank, stored_dtype=dtype
    )
    tensors, _ = stored.to_tensors()  # as written: 4-bit codes two to a byte, with their scales
    held = sum(t.numel() * t.element_size() for name, t in tensors.items() if name != "losses")
    work = Workload(
        batch_size=4,
        max_length=16,
        documents=len(docs),
        device="cpu",
        projection=projection,
        document_rank=rank,
        stored_gradient_dtype=dtype,
    )
    assert plan(ModelShape.of_config(CONFIG, ["mlp"]), work).step("scores").disk == held  # no queries: no score matrix


def test_peak_allocations_counts_a_storage_once_and_frees_it():
    with PeakAllocations() as m:
        x = torch.ones(1000)
        view = x[:10]  # noqa: F841  (same storage)
        y = x * 2
        del y
        z = x + 1  # noqa: F841
    assert m.peak == 8000 and m.live == 8000


SEVEN_B = LlamaConfig(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
)


def test_a_run_too_large_for_the_device_gets_the_settings_of_fewest_passes_that_fit():
    """Against every setting: each layer group repeats a forward and backward (4/6 of a training
    step) and checkpointing a forward (2/6) in every group; the fewest passes win, then the larger
    batch, fewer groups, no checkpointing. Layer groups first (as the plan once did) is not it."""
    shape = ModelShape.of_config(SEVEN_B, ["mlp"])
    work = Workload(batch_size=8, max_length=512, dtype="bfloat16", documents=1000, queries=8, query_length=64)
    assert plan(shape, work).peak.device > 80e9
    fitted_plan, fitted = fitting_plan(shape, work, int(80e9))
    best = min(
        (groups * 4 + checkpointed * groups * 2, -batch, groups, checkpointed)
        for groups, batch, checkpointed in itertools.product(range(1, 97), (8, 4, 2, 1), (False, True))
        if plan(
            shape, replace(work, layer_groups=groups, batch_size=batch, activation_checkpointing=checkpointed)
        ).peak.device
        <= 80e9
    )
    assert (fitted.layer_groups, -fitted.batch_size, fitted.activation_checkpointing) == (best[2], best[1], best[3])
    assert fitted_plan.peak.device <= 80e9 and fitted.batch_size < 8  # at batch 8 it takes more groups
    assert suggestion(work, fitted) == f"layer_groups: {fitted.layer_groups}, batch_size: {fitted.batch_size}"
    with pytest.raises(
        InputError,
        match=r"needs [\d.]+ GB of device memory at its smallest settings .*batch_size 1, "
        r"layer_groups 96, activation_checkpointing\).*the device has 1 GB; track fewer "
        r"layers, shorten max_length, set factor_block_size",
    ):
        fitting_plan(shape, work, int(1e9))


def test_activation_checkpointing_is_suggested_when_nothing_else_fits():
    """Checkpointed blocks keep one hidden state per token and block: far less than their activations."""
    shape = ModelShape.of_config(SEVEN_B, ["mlp"])
    work = Workload(batch_size=8, max_length=512, dtype="bfloat16", documents=1000, queries=8, query_length=64)
    smallest = plan(shape, replace(work, batch_size=1, layer_groups=len(shape.layers)))
    checkpointed = plan(
        shape, replace(work, batch_size=1, layer_groups=len(shape.layers), activation_checkpointing=True)
    )
    saved = smallest.step("covariances").parts["activations"] - checkpointed.step("covariances").parts["activations"]
    per_block = 2 * (6 * 4096 + 2 * 4096 + 4 * 11008) + 8 * 4096  # bf16 tensors, float32 norm copies
    assert saved == 512 * (31 * per_block - 32 * 2 * 4096)  # all blocks' tensors but one, less their bf16 inputs
    fitted_plan, fitted = fitting_plan(shape, work, int(smallest.peak.device) - 1)
    assert fitted.activation_checkpointing and fitted_plan.peak.device < smallest.peak.device
    assert "activation_checkpointing: true" in suggestion(work, fitted)


def test_the_device_plan_chooses_groups_or_refuses_with_the_setting_that_fits():
    shape = ModelShape.of_config(SEVEN_B, ["mlp"])
    settings = dict(device="cpu", dtype="bfloat16", device_memory_gb=80.0)
    chosen = device_plan(
        PretraceConfig(**settings), shape, workload(PretraceConfig(**settings), documents=0, queries=8)
    )
    assert chosen.chosen and chosen.groups > 1 and chosen.plan.peak.device <= 80e9 and chosen.work.batch_size == 8
    fewer = fitting_plan(shape, replace(chosen.work, layer_groups=1), int(80e9))[1]  # at a smaller batch
    assert fewer.layer_groups < chosen.groups and fewer.batch_size < 8
    # each scoring pass in the fewest groups its own step fits in: the query pass holds every factor
    query, documents = chosen.groups_of("query_gradients"), chosen.groups_of("scores")
    assert plan(shape, replace(chosen.work, query_groups=query - 1)).step("query_gradients").device > 80e9
    assert (
        documents == 1 or plan(shape, replace(chosen.work, document_groups=documents - 1)).step("scores").device > 80e9
    )
    scoring = f"query gradients in {query} groups, document gradients in {documents}, the fewest that fit"
    assert chosen.headline() == (
        f"layer_groups: {chosen.groups} (chosen by the plan); {scoring}; in fewer passes: "
        f"layer_groups: {fewer.layer_groups}, batch_size: {fewer.batch_size}"
    )
    grouped = PretraceConfig(**settings, layer_groups=chosen.groups)
    fanned = device_plan(grouped, shape, workload(grouped, documents=0, queries=8))
    assert fanned.plan.peak.device == chosen.plan.peak.device
    assert (
        fanned.headline()
        == f"layer_groups: {chosen.groups} (the EK-FAC fitting partitioned by group: a run per shard and group); {scoring}"
    )
    fixed = PretraceConfig(**settings, layer_groups=1)
    with pytest.raises(
        InputError,
        match=rf"device has 80 GB; set layer_groups: {chosen.groups} in pretrace.yaml .*backward pass\); in fewer "
        rf"passes: layer_groups: {fewer.layer_groups}, batch_size: {fewer.batch_size}\n",
    ):
        device_plan(fixed, shape, workload(fixed, documents=0, queries=8))
    small = PretraceConfig(**{**settings, "device_memory_gb": 40.0})  # one layer a group at batch 8 needs 48.5 GB
    with pytest.raises(
        InputError,
        match=r"set layer_groups: \d+, batch_size: [124] in pretrace.yaml .*a smaller "
        r"batch_size recomputes the gradients",
    ):
        device_plan(small, shape, workload(small, documents=0, queries=8))


@pytest.mark.parametrize("projection", [(8, 8), (500, 7)])
def test_the_scoring_pass_is_planned_to_hold_the_projections_document_matrices_alone(projection):
    """The bytes of what a document pass moves to the device (`KroneckerProjection.for_documents`)."""
    model = wrap_model(LlamaForCausalLM(CONFIG).eval(), layers=["mlp"], device="cpu")
    built = KroneckerProjection.build(model.layer_shapes(), *projection, seed=0, basis="raw")
    held = built.for_documents(list(model.layer_shapes()), torch.device("cpu"), torch.float32)
    tensors = [t for side in (held.P_out, held.P_in) for t in side.values() if t is not None]
    work = Workload(batch_size=4, max_length=16, documents=6, device="cpu", projection=projection)
    planned = plan(ModelShape.of_config(CONFIG, ["mlp"]), work).step("scores").parts["kept eigenvectors"]
    assert planned == sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("block_size", [None, 4, 3])
def test_the_planned_covariance_sums_are_the_bytes_the_device_sums_hold(block_size):
    """`BlockDiagonalSum` keeps a float64 total and a float32 running sum per diagonal block only:
    the plan's "float64 sums" are the bytes they hold once a term has been added."""
    shape = ModelShape(parameters=0, blocks=1, hidden=7, kv_hidden=7, intermediate=10, vocab=8, layers={"l": (10, 7)})
    planned = plan(shape, Workload(factor_block_size=block_size)).step("covariances").parts["float64 sums"]
    with PeakAllocations() as m:
        sums = [BlockDiagonalSum(side, torch.device("cpu"), block_size) for side in (7, 10)]
        for total, side in zip(sums, (7, 10), strict=True):
            total.add_gram(torch.ones(2, side))
        held = m.live
    assert planned == held
    assert held < 12 * (7 * 7 + 10 * 10) if block_size else held == 12 * (7 * 7 + 10 * 10)
