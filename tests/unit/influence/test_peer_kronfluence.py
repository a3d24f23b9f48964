"""pretrace against kronfluence (the reference EK-FAC implementation) on identical settings.

Both sides: the MLP linear layers of a tiny trained Llama, EK-FAC with the empirical Fisher
(true next-token labels), damping 0.1 x mean(Lambda) per layer (kronfluence's heuristic when
ScoreArguments.damping_factor is None: kronfluence/factor/config.py, EkfacConfig.prepare adds
HEURISTIC_DAMPING_SCALE * mean(lambda_matrix / num_lambda_processed), i.e. the mean over the
per-example-averaged corrected eigenvalues, exactly pretrace's `Damping()`), the summed
next-token cross-entropy of each sequence as the training loss, and the summed loss of the
completion tokens only as the query measurement. kronfluence scores
grad(measurement)^T H^-1 grad(train loss); with the measurement being the completion's loss,
that is pretrace's <H^-1 grad(-log p_q), grad L_d>.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from pretrace.analyses.correlation import pearson
from pretrace.influence.ekfac import Damping, fit_factors
from pretrace.influence.query_gradients import query_gradients_from_tokens
from pretrace.influence.scores import stream_scores
from pretrace.inputs.batching import batches
from pretrace.inputs.query_file import Query, encode_queries
from pretrace.model.adapter import wrap_model
from pretrace.testing.kronfluence_peer import Sequences, collate_fn, summed_task
from pretrace.testing.tiny import sentence_documents

kronfluence = pytest.importorskip(
    "kronfluence", reason="kronfluence is not installed (make venv installs it with --no-deps)"
)
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.utils.dataset import DataLoaderKwargs  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.filterwarnings("ignore:.*GradScaler.*:FutureWarning")]

QUERIES = [
    Query("capital", "The capital of France is", " Paris."),
    Query("slope", "The slope between (1, 2) and (3, 8) is", " (8 - 2) / (3 - 1) = 3."),
    Query("arith", "(7 - 4) * 8 =", " 3 * 8 = 24"),
    Query("code", "def add(a, b):", "\n    return a + b\n"),
    Query("river", "Rivers flow into the", " sea and the sea is salty."),
    Query("solve", "To solve 3x + 4 = 10,", " subtract 4 from both sides"),
]
BATCH = 8
N_DOCS = 48


@pytest.fixture(scope="module")
def setup(trained_llama):
    tok, model = trained_llama
    docs = sentence_documents(tok, n=N_DOCS, seed=3)
    lm = wrap_model(model, tok, layers=["mlp"], device="cpu")
    sequences, starts = encode_queries(QUERIES, tok)
    return lm, tok, docs, sequences, starts


def _pretrace_scores(lm, docs, sequences, starts):
    factors = fit_factors(
        lm, lambda: (b for _, b in batches(docs, BATCH, lm.pad_token_id)), fisher="empirical", damping=Damping()
    )
    qg = query_gradients_from_tokens(lm, factors, sequences, starts, [q.id for q in QUERIES], batch_size=BATCH)
    return factors, stream_scores(lm, qg, docs, batch_size=BATCH)


def _kronfluence_scores(lm, tok, docs, sequences, starts, output_dir):
    logging.getLogger("kronfluence").setLevel(logging.ERROR)

    model = copy.deepcopy(lm.model)  # prepare_model wraps modules in place
    task = summed_task([layer.name for layer in lm.layers])
    model = prepare_model(model, task)
    analyzer = Analyzer("peer", model, task, cpu=True, disable_tqdm=True, output_dir=str(output_dir))
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn(tok.pad_token_id)))
    factor_args = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=True,
        activation_covariance_dtype=torch.float64,
        gradient_covariance_dtype=torch.float64,
        eigendecomposition_dtype=torch.float64,
        lambda_dtype=torch.float64,
        covariance_max_examples=None,
        lambda_max_examples=None,
    )
    analyzer.fit_all_factors(
        "ekfac", Sequences(docs), per_device_batch_size=BATCH, factor_args=factor_args, overwrite_output_dir=True
    )
    score_args = ScoreArguments(damping_factor=None)  # None: 0.1 x mean(Lambda), per layer
    analyzer.compute_pairwise_scores(
        "pairwise",
        "ekfac",
        Sequences(sequences, starts),
        Sequences(docs),
        per_device_query_batch_size=BATCH,
        per_device_train_batch_size=BATCH,
        score_args=score_args,
        overwrite_output_dir=True,
    )
    lambdas = analyzer.load_lambda_matrices("ekfac")
    mean_lambdas = {k: v / lambdas["num_lambda_processed"][k] for k, v in lambdas["lambda_matrix"].items()}
    return mean_lambdas, analyzer.load_pairwise_scores("pairwise")["all_modules"]


def test_pretrace_matches_kronfluence(setup, tmp_path):
    lm, tok, docs, sequences, starts = setup
    factors, ours = _pretrace_scores(lm, docs, sequences, starts)
    their_lambdas, theirs = _kronfluence_scores(lm, tok, docs, sequences, starts, tmp_path)
    # The eigenvalue correction is averaged over examples on both sides, so the damping
    # 0.1 x mean(Lambda) is the same number.
    for name, ours_lambda in factors.lambdas.items():
        torch.testing.assert_close(
            their_lambdas[name].float(), ours_lambda, rtol=1e-3, atol=1e-6 * float(ours_lambda.max())
        )
    assert theirs.shape == ours.shape == (len(QUERIES), len(docs))
    correlations = [pearson(ours[i], theirs[i]) for i in range(len(QUERIES))]
    relative = float((ours - theirs).norm() / theirs.norm())
    print(f"per-query Pearson vs kronfluence: {[f'{c:.9f}' for c in correlations]}; relative error {relative:.2e}")
    assert min(correlations) >= 0.99, correlations
    # Same preconditioner and same gradients: the scale agrees too, not just the ranking.
    assert relative < 1e-2, relative
