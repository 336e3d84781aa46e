"""Data: shard format, tokenizers and byte accounting, builders, hub download, synthetic language, loaders.

Modules: shards, tokenizer, byte_table, caseops, build, shard_stats, synthetic, loader, hub, dataset.
"""
