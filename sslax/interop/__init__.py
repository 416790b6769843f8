"""Interoperability with other toolkits' checkpoints.

It sits above sslax.registry (model types and the sslax checkpoint directory, which it
converts to and from) and sslax.models; nothing below it imports it. `hf`: Hugging Face
`transformers` import and export of wav2vec 2.0 (Transformer and conformer), HuBERT and
CTC models (with their tokenizer), and its command line; the `hf_*` modules are its parts:
`hf_families` (which transformers class is which sslax model), `hf_config_fields`
(config.json <-> model fields), `hf_tensor_map` and `hf_architecture_maps` (each HF tensor
as one sslax variable), `hf_state_dict` (whole state dicts, checked) and `hf_processor` (a
CTC model's tokenizer and feature extractor).
"""
