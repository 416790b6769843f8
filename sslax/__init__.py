"""sslax: self-supervised speech pretraining in JAX/Flax."""

__version__ = "0.1.0"
