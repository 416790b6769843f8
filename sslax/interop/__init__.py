"""Interoperability with other toolkits' checkpoints.

`checkpoint`: the sslax checkpoint directory (model fields, parameters, model state and a
CTC model's vocabulary), written and read without a train state; a training workdir read
the same way. `hf`: Hugging Face `transformers` import and export of wav2vec 2.0
(Transformer and conformer), HuBERT and CTC models (with their tokenizer).
"""
