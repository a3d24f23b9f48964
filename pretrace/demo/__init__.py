"""The embedded demo: a corpus, queries and a tiny model built from vendored snapshots.
Imports inputs, model, store and the base modules; the project layer asks it for the demo's model shape.

corpus.build_demo_corpus, queries.build_demo_queries, tokenizer.train_tokenizer and
train.train_demo_model are the entry points; facts and procedures hold the renderers that
corpus and queries share, library_text the standard-library code and documentation.
"""
