"""The k-means job and the unit shards it writes for HuBERT pretraining."""
