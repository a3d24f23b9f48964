"""The embedded demo: a corpus, queries and a tiny model built from what is on the machine.

corpus.build_demo_corpus, queries.build_demo_queries, tokenizer.train_tokenizer and
train.train_demo_model are the entry points; facts and procedures hold the renderers that
corpus and queries share, library_text the standard-library code and documentation.
"""
