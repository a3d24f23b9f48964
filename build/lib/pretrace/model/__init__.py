"""The model under study: loading a Hugging Face causal LM, its tracked layers, checkpoint cache.
Imports store and the base modules."""
