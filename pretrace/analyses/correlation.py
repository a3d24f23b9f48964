"""Mean query-query correlations within and across groups of queries, with uncertainty.

A group is a set of query pairs (e.g. "both of the same reasoning kind"). Its mean is the
average Pearson r over its pairs. Pairs share queries, so they are not independent: intervals
come from a bootstrap over queries, stratified by kind (each kind keeps its number of queries;
a query drawn twice does not pair with itself). The same bootstrap draws serve every group, so
differences between groups get intervals too. The permutation test shuffles kind labels among
reasoning queries to ask whether same-kind pairs correlate more than cross-kind pairs by chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrace.analyses.report_config import CONTROL, FACTUAL, PLANTED, REASONING


def pearson(x, y) -> float:
    """Pearson correlation of two flat arrays or tensors, in float64 (so values near 1 are not
    rounding noise); NaN when either is constant. The one definition every check and bench uses."""
    a, b = (np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, np.float64).ravel() for v in (x, y))
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def answered_group(group: str, answers: str) -> str:
    """The name of a pair group restricted to pairs of queries both answered ``answers``."""
    return f"{group}, both answered {answers}"


def pair_groups(
    kinds: list[str], categories: list[str], answers: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Boolean (Q, Q) masks (symmetric, empty diagonal) of the pair groups reported.

    With ``answers`` (per label, which queries the model answered that way:
    `Analysis.answer_masks`) the same-reasoning-kind and within-factual groups are also split by
    the model's answers, as Ruis et al. read their findings on correct and incorrect completions
    apart."""
    kinds_a, cats = np.asarray(kinds, dtype=object), np.asarray(categories, dtype=object)
    same_kind = kinds_a[:, None] == kinds_a[None, :]
    reasoning = cats == REASONING
    factual = cats == FACTUAL
    control = cats == CONTROL

    def both(a, b):
        return np.outer(a, b) | np.outer(b, a)

    groups: dict[str, np.ndarray] = {}
    for kind in sorted({k for k, c in zip(kinds, categories) if c == REASONING}):
        groups[f"within {kind}"] = both(kinds_a == kind, kinds_a == kind)
    groups["same reasoning kind"] = both(reasoning, reasoning) & same_kind
    groups["different reasoning kinds"] = both(reasoning, reasoning) & ~same_kind
    groups["within factual"] = both(factual, factual)
    planted = cats == PLANTED
    if planted.any():  # planted facts are their own kind: never pooled into "within factual"
        groups["within planted"] = both(planted, planted)
    groups["reasoning vs factual"] = both(reasoning, factual)
    groups["control vs others"] = both(control, ~control)
    # Ruis et al. read control queries among themselves, and factual controls apart from reasoning
    # controls: each control kind (e.g. `factual_control`, `reasoning_control`) gets its own groups.
    for kind in sorted({k for k, c in zip(kinds, categories) if c == CONTROL}):
        mine = kinds_a == kind
        groups[f"within {kind}"] = both(mine, mine)
        groups[f"{kind} vs factual"] = both(mine, factual)
        groups[f"{kind} vs reasoning"] = both(mine, reasoning)
    for label, mine in (answers or {}).items():
        pair = np.outer(mine, mine)
        for name in ("same reasoning kind", "within factual"):
            groups[answered_group(name, label)] = groups[name] & pair
    eye = np.eye(len(kinds), dtype=bool)
    return {name: mask & ~eye for name, mask in groups.items()}


@dataclass
class GroupMeans:
    means: dict[str, float]
    pairs: dict[str, int]
    replicates: dict[str, np.ndarray]  # bootstrap means (NaN where a draw left no pair)

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        return _interval(self.replicates[name], level)

    def difference(self, a: str, b: str, level: float = 0.95) -> tuple[float, float, float]:
        """Mean of a minus mean of b, with a bootstrap interval from the same draws."""
        return self.means[a] - self.means[b], *_interval(self.replicates[a] - self.replicates[b], level)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def stratified_weights(strata: list[str], draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, Q) multiplicities of each query in bootstrap samples resampled within each stratum."""
    q = len(strata)
    weights = np.zeros((draws, q))
    labels = np.asarray(strata, dtype=object)
    for stratum in sorted(set(strata)):
        members = np.nonzero(labels == stratum)[0]
        k = members.size
        picks = rng.integers(0, k, size=(draws, k)) + np.arange(draws)[:, None] * k
        weights[:, members] = np.bincount(picks.ravel(), minlength=draws * k).reshape(draws, k)
    return weights


def group_means(
    r: np.ndarray, groups: dict[str, np.ndarray], strata: list[str], draws: int = 2000, seed: int = 0
) -> GroupMeans:
    """Mean r of each group, and its bootstrap replicates (queries resampled within strata)."""
    finite = np.isfinite(r)
    r0 = np.where(finite, r, 0.0)
    weights = stratified_weights(strata, draws, np.random.default_rng(seed))
    means, pairs, replicates = {}, {}, {}
    for name, mask in groups.items():
        m = mask & finite
        pairs[name] = int(m.sum() // 2)
        means[name] = float(r0[m].mean()) if m.any() else float("nan")
        num = np.einsum("bi,ij,bj->b", weights, np.where(m, r0, 0.0), weights)
        den = np.einsum("bi,ij,bj->b", weights, m.astype(float), weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates[name] = np.where(den > 0, num / den, np.nan)
        if m.any(axis=1).sum() < 3:  # one pair: resampling two queries says nothing about spread
            replicates[name][:] = np.nan
    return GroupMeans(means, pairs, replicates)


def same_kind_permutation_test(
    r: np.ndarray, kinds: list[str], categories: list[str], permutations: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """(observed difference, one-sided p) of mean r for same- minus different-kind reasoning pairs.

    Under the null the kind labels of reasoning queries are exchangeable; p counts shuffles at
    least as extreme as observed, (1 + hits) / (1 + permutations). NaN when there are fewer than
    two reasoning kinds or no same-kind pair.
    """
    index = [i for i, c in enumerate(categories) if c == REASONING]
    labels = np.asarray([kinds[i] for i in index], dtype=object)
    if len(set(labels)) < 2:
        return float("nan"), float("nan")
    sub = r[np.ix_(index, index)]
    finite = np.isfinite(sub) & ~np.eye(len(index), dtype=bool)

    def statistic(lab: np.ndarray) -> float:
        same = (lab[:, None] == lab[None, :]) & finite
        diff = (lab[:, None] != lab[None, :]) & finite
        if not same.any() or not diff.any():
            return float("nan")
        return float(sub[same].mean() - sub[diff].mean())

    observed = statistic(labels)
    if not np.isfinite(observed):
        return observed, float("nan")
    rng = np.random.default_rng(seed)
    hits = sum(statistic(rng.permutation(labels)) >= observed - 1e-12 for _ in range(permutations))
    return observed, (1 + hits) / (1 + permutations)
