"""Interoperability with other toolkits' checkpoints.

`checkpoint`: the sslax checkpoint directory (model fields, parameters, model state and a
CTC model's vocabulary), written and read without a train state; a training workdir read
the same way. `hf`: Hugging Face `transformers` import and export of wav2vec 2.0
(Transformer and conformer), HuBERT and CTC models (with their tokenizer), and its command
line; the `hf_*` modules are its parts: `hf_families` (which transformers class is which
sslax model), `hf_config_fields` (config.json <-> model fields), `hf_tensor_map` and
`hf_architecture_maps` (each HF tensor as one sslax variable), `hf_state_dict` (whole
state dicts, checked) and `hf_processor` (a CTC model's tokenizer and feature extractor).
"""
