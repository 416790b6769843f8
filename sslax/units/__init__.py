"""The k-means job (`job`), its frame features (`sources`) and the units' quality analysis
(`quality`); the unit shards it writes, which HuBERT pretraining reads, are laid out in
sslax/data/unit_shards.py."""
