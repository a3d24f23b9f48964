"""The user's inputs: corpus files, tokenization, query files, padded batches.
Imports model, store and the base modules."""
