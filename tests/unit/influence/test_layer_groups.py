"""Layer groups: the same factors, query gradients and scores as one ungrouped pass."""

import pytest
import torch

from pretrace.errors import InputError
from pretrace.influence.ekfac import CovarianceState, Factors, fit_covariances, fit_factors
from pretrace.influence.layer_groups import factor_floats, layer_groups, split_layers
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.planning.peak_memory import PeakAllocations
from pretrace.testing.tiny import random_sequences, tiny_model


def test_groups_are_consecutive_disjoint_and_balanced():
    shapes = {f"l{i}": (d, d) for i, d in enumerate([8, 8, 8, 8, 16, 4, 4, 4])}
    for groups in range(1, len(shapes) + 1):
        split = split_layers(shapes, groups)
        assert len(split) == groups and all(split)
        assert [name for group in split for name in group] == list(shapes)
    sizes = [sum(factor_floats(*shapes[n]) for n in group) for group in split_layers(shapes, 2)]
    assert max(sizes) <= 0.6 * sum(sizes)  # the 16-wide layer (a third of the total) sits with few others


def test_group_counts_outside_the_layers_are_refused():
    shapes = {"a": (2, 2), "b": (2, 2)}
    for groups in (0, 3):
        with pytest.raises(InputError, match=r"layer_groups: must be between 1 and the 2 tracked layers, got"):
            split_layers(shapes, groups)


@pytest.fixture(scope="module")
def setting():
    lm = wrap_model(tiny_model("llama", layers=3), layers=["mlp"], device="cpu")
    docs = random_sequences(12, seed=1)
    queries = random_sequences(4, seed=2, min_len=8)
    return lm, docs, queries, [3] * len(queries), [f"q{i}" for i in range(len(queries))]


def _fit(lm, docs, groups):
    return fit_factors(lm, lambda: (b for _, b in batches(docs, 5, 0)), fisher="sampled", seed=7, groups=groups)


@pytest.mark.parametrize("groups", [2, 9])
def test_grouped_fitting_equals_one_pass(setting, groups):
    lm, docs, *_ = setting
    whole, grouped = _fit(lm, docs, 1), _fit(lm, docs, groups)
    assert grouped.layers == whole.layers and grouped.damping == pytest.approx(whole.damping, rel=1e-6)
    for part in ("QA", "QS", "lambdas"):
        for name in whole.layers:
            torch.testing.assert_close(getattr(grouped, part)[name], getattr(whole, part)[name], rtol=1e-5, atol=1e-6)


def test_a_group_captures_only_its_layers(setting):
    lm, docs, *_ = setting
    first = layer_groups(lm, 3)[0]
    cov = fit_covariances(first, (b for _, b in batches(docs, 5, 0)))
    assert list(cov.A) == [layer.name for layer in first.layers] and len(cov.A) == 3


@pytest.mark.parametrize("rank", [None, 2])
def test_grouped_query_gradients_and_scores_equal_one_pass(setting, rank):
    lm, docs, queries, starts, ids = setting
    factors = _fit(lm, docs, 1)
    whole = query_gradients_from_tokens(lm, factors, queries, starts, ids, rank=rank)
    grouped = query_gradients_from_tokens(lm, factors, queries, starts, ids, rank=rank, groups=4)
    assert grouped.layers == whole.layers and grouped.ids == whole.ids
    for name in whole.layers:
        torch.testing.assert_close(grouped.dense(name), whole.dense(name), rtol=1e-5, atol=1e-7)
    expected = stream_scores(lm, whole, docs)
    torch.testing.assert_close(
        stream_scores(lm, whole, docs, groups=4), expected, rtol=1e-5, atol=1e-6 * expected.abs().max()
    )


def test_joining_refuses_overlapping_groups_and_different_data():
    one = CovarianceState({"a": torch.eye(2)}, {"a": torch.eye(2)}, 10, 2)
    with pytest.raises(InputError, match=r"layer groups overlap in \['a'\]"):
        CovarianceState.join([one, one])
    other = CovarianceState({"b": torch.eye(2)}, {"b": torch.eye(2)}, 11, 2)
    with pytest.raises(InputError, match="layer groups were fitted on different data"):
        CovarianceState.join([one, other])
    factors = Factors({"a": torch.eye(2)}, {"a": torch.eye(2)}, {"a": torch.ones(2, 2)}, {"a": 0.1})
    assert Factors.join([factors.restricted(["a"])]).layers == ["a"]


def test_scoring_memory_stays_flat_as_tracked_layers_double_in_more_groups():
    """Twice the tracked layers in twice the groups: each pass holds one group, so the peak of
    what scoring allocates stays where it was (measured, not planned)."""
    model = tiny_model("llama", layers=4, hidden=64, intermediate=256)
    docs = random_sequences(8, seed=5, min_len=20, max_len=30)
    peaks = []
    for patterns, groups in ((["layers\\.[01]\\.mlp"], 1), (["mlp"], 2)):
        lm = wrap_model(model, layers=patterns, device="cpu")
        factors = fit_factors(lm, lambda: (b for _, b in batches(docs, 4, 0)), fisher="empirical", groups=groups)
        queries = query_gradients_from_tokens(lm, factors, docs[:3], [5] * 3, ["a", "b", "c"])
        stream_scores(lm, queries, docs[:4], batch_size=4, groups=groups)  # lasting first-call caches
        with PeakAllocations() as m:
            stream_scores(lm, queries, docs, batch_size=4, groups=groups)
        peaks.append(m.peak)
    assert len(wrap_model(model, layers=["mlp"], device="cpu").layers) == 12
    assert peaks[1] <= 1.1 * peaks[0], peaks
