"""What a pretrained model's layers encode: CCA with acoustic, phonetic and lexical
properties and a linear phone probe per layer (`python -m sslax.analysis.layers`)."""
