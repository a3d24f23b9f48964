"""Jobs: the per-shard work, and the EK-FAC fitting passes."""

import dagster as dg

from assets.corpus import corpus_shards
from assets.ekfac import ekfac_covariances, ekfac_lambdas
from assets.gradients import document_gradients
from assets.partitions import shard_partitions
from assets.scores import influence_scores

# What a new corpus file needs: its tokens, its document gradients and its scores.
shard_job = dg.define_asset_job(
    "shard_job",
    selection=dg.AssetSelection.assets(corpus_shards, document_gradients, influence_scores),
    partitions_def=shard_partitions,
    description="Tokenize one corpus file, compute its document gradients and score it against every query.",
)

fit_job = dg.define_asset_job(
    "fit_covariances_job",
    selection=dg.AssetSelection.assets(ekfac_covariances),
    partitions_def=shard_partitions,
    description="The first EK-FAC pass over one fit shard.",
)

lambdas_job = dg.define_asset_job(
    "fit_lambdas_job",
    selection=dg.AssetSelection.assets(ekfac_lambdas),
    partitions_def=shard_partitions,
    description="The eigenvalue-correction pass over one fit shard.",
)

JOBS = [shard_job, fit_job, lambdas_job]
