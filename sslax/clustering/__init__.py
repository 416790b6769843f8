"""Clustering of frame features: k-means in JAX over the device mesh."""
