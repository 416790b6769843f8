"""Interoperability with other toolkits' checkpoints.

`checkpoint`: the sslax checkpoint directory (model fields + parameters), written and read
without a train state. `hf`: Hugging Face `transformers` wav2vec 2.0 import and export.
"""
