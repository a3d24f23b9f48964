"""The paper's analyses over scores: mergeable shard statistics, top documents, answers, estimators.
Imports influence and every layer below it; renders nothing."""
