"""Jobs: the per-shard work, and the EK-FAC fitting passes."""

import dagster as dg

from pretrace.assets.ekfac import ekfac_covariances, ekfac_lambdas
from pretrace.assets.partitions import shard_partitions

# What a new corpus file needs: its tokens, its document gradients and its scores.
SHARD_ASSETS = ("corpus_shards", "document_gradients", "influence_scores")
shard_job = dg.define_asset_job(
    "shard_job",
    selection=dg.AssetSelection.assets(*SHARD_ASSETS),
    partitions_def=shard_partitions,
    description="Tokenize one corpus file, compute its document gradients and score it against every query.",
)

# The fitting jobs take their assets' partitions: per shard, or per shard and layer group.
fit_job = dg.define_asset_job(
    "fit_covariances_job",
    selection=dg.AssetSelection.assets(ekfac_covariances),
    description="The first EK-FAC pass over one fit shard (one layer group of it, with `layer_groups` > 1).",
)

lambdas_job = dg.define_asset_job(
    "fit_lambdas_job",
    selection=dg.AssetSelection.assets(ekfac_lambdas),
    description="The eigenvalue-correction pass over one fit shard (one layer group of it, with `layer_groups` > 1).",
)

JOBS = [shard_job, fit_job, lambdas_job]
