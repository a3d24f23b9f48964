"""The report's statistics against hand computations and known distributions: multiplicity
corrections, paired tests, the maximum-likelihood power-law exponent, and cut-offs relative to
the corpus."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pretrace.analyses.concentration import fit_power_law, fit_power_law_mle, pareto_mle
from pretrace.analyses.cutoffs import Cutoff, resolve_k
from pretrace.analyses.multiplicity import benjamini_hochberg, holm
from pretrace.analyses.paired import paired_test, sign_flip_p


def test_holm_and_benjamini_hochberg_match_a_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 of m = 4: Holm 4(0.005), 3(0.01), 2(0.03), 1(0.04), made monotone
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH m p / i: 0.02, 0.02, 0.04, 0.04, made monotone from the largest down
    assert benjamini_hochberg(p)[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert np.isnan(holm(p)[4]) and np.isnan(benjamini_hochberg(p)[4])  # a test that could not run stays out
    assert holm(np.array([0.6, 0.9])).tolist() == [1.0, 1.0]  # capped at 1
    assert holm(np.array([])).size == 0


def test_the_sign_flip_test_enumerates_every_sign_pattern():
    d = np.array([1.0, 2.0, 3.0, -0.5])
    means = [abs(np.dot(s, d)) / 4 for s in itertools.product((1, -1), repeat=4)]
    assert sign_flip_p(d) == pytest.approx(np.mean([m >= abs(d.mean()) - 1e-12 for m in means]))
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)  # only all + and all - reach 2


def test_a_paired_test_pairs_queries_and_skips_missing_values():
    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    better = base + 0.5 + 0.1 * rng.normal(size=30)
    better[3] = np.nan  # one query without a value: left out of both
    t = paired_test(better, base, seed=1)
    assert t.n == 29
    assert t.mean_difference == pytest.approx(np.nanmean(better - base))
    assert t.permutation_p < 0.001  # Monte Carlo: (1 + hits) / (1 + draws)
    d = (better - base)[np.isfinite(better)]
    assert t.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(d).pvalue)
    # no shift, only noise: a large p
    assert paired_test(base, base + 1e-3 * rng.normal(size=30)).permutation_p > 0.01
    with pytest.raises(ValueError, match="one value per query"):
        paired_test(base, base[:5])


@pytest.mark.parametrize("a", [0.8, 1.5, 3.0])
def test_the_mle_exponent_recovers_a_known_power_law(a):
    """x = x_min U^(-1/a) has P(X > x) = (x / x_min)^-a, density exponent alpha = a + 1; the MLE's
    standard error is a / sqrt(n), so 4 of them bound the estimate (a chance of about 6e-5)."""
    n = 20_000
    x = 2.0 * np.random.default_rng(7).uniform(size=n) ** (-1 / a)
    alpha, se = pareto_mle(x, 2.0)
    assert abs(alpha - (a + 1)) < 4 * a / math.sqrt(n)
    assert se == pytest.approx((alpha - 1) / math.sqrt(n))
    # the rank form: the top R scores, x_min the R-th; slope -1/a with error (1/a) / sqrt(R - 1)
    top = np.sort(x)[::-1]
    r = 2_000
    fit = fit_power_law_mle(top, 5_000, x_min_rank=r)
    assert fit.ranks == r
    assert abs(fit.slope + 1 / a) < 4 * (1 / a) / math.sqrt(r - 1)
    assert math.log(top[r - 1]) == pytest.approx(fit.intercept + fit.slope * math.log(r))
    chosen = fit_power_law_mle(top, 1_000)  # x_min by Clauset et al.'s KS criterion: the whole sample is a tail
    assert abs(chosen.slope + 1 / a) < 4 * (1 / a) / math.sqrt(chosen.ranks - 1)


def test_the_ks_criterion_puts_x_min_where_the_power_law_starts():
    """A Pareto tail (a = 1.5) of 300 scores above 1 over a flat body of 3,000 in (0.5, 1): x_min
    is chosen near rank 300, and the slope is the tail's, where a fit down into the body is not."""
    rng = np.random.default_rng(11)
    scores = np.sort(np.concatenate([rng.uniform(size=300) ** (-1 / 1.5), rng.uniform(0.5, 1.0, 3_000)]))[::-1]
    fit = fit_power_law_mle(scores, 3_300)
    assert 150 <= fit.ranks <= 330
    assert abs(fit.slope + 1 / 1.5) < 4 * (1 / 1.5) / math.sqrt(fit.ranks - 1)
    assert fit_power_law_mle(scores, 3_300, x_min_rank=3_000).slope > -0.5  # the body flattens a fit taken too deep


def test_the_mle_needs_positive_scores_above_x_min():
    assert np.isnan(fit_power_law_mle(np.array([1.0, 0.5, -1.0])).slope)  # two positive values: no fit
    assert np.isnan(pareto_mle(np.array([1.0, 1.0]), 1.0)[0])  # no spread above x_min
    exact = 7.0 * np.arange(1, 101, dtype=float) ** -0.6  # an exact rank power law: both fits see it
    assert fit_power_law(exact).slope == pytest.approx(-0.6)
    assert fit_power_law_mle(exact).slope == pytest.approx(-0.6, rel=0.1)


def test_cut_offs_are_counts_or_fractions_of_the_corpus():
    assert resolve_k(2_102, 50, None) == (50, "count")
    assert resolve_k(2_102, 50, 1e-4) == (1, "fraction")  # the paper's 0.01% of a small corpus: one document
    assert resolve_k(5_000_000, 50, 1e-4) == (500, "fraction")  # ... and of the paper's: its k = 500
    assert resolve_k(5_000_000, 50, 1e-4, available=200) == (200, "fraction")  # capped by the stored top lists
    wide = Cutoff("top documents", 500, 2_102, "count")
    assert wide.fraction == pytest.approx(500 / 2_102) and wide.too_wide
    assert wide.paper_equivalent == round(500 / 2_102 * 5_000_000)
    assert not Cutoff("top documents", 500, 5_000_000, "count").too_wide  # 0.01%
    assert not Cutoff("top documents", 105, 2_100, "count").too_wide  # exactly 5% is not more than 5%
