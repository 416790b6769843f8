"""wav2vec 2.0 Large with a conformer encoder (fairseq wav2vec2_conformer_large_librivox.yaml).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/w2v_conformer_large.py --workdir=DIR \
    --config.data.name=...

Sources: fairseq examples/wav2vec/config/pretraining/wav2vec2_conformer_large_librivox.yaml
(`layer_type: conformer`, `attn_type: espnet`, `pos_enc_type: rel_pos`; every other value
as wav2vec2_large_librivox.yaml, i.e. configs/w2v_large.py) and fairseq's conformer layer
(depthwise kernel 31, batch norm, swish; no convolutional positional embedding), which
transformers' `Wav2Vec2ConformerModel` (facebook/wav2vec2-conformer-rel-pos-large) mirrors.
`python -m sslax.describe --config=configs/w2v_conformer_large.py` prints the parameter
count (transformers' `Wav2Vec2ConformerForPreTraining` has the same modules) and FLOPs.
"""

from configs import w2v_large


def get_config(arg=None):
  del arg
  c = w2v_large.get_config()
  c.unlock()
  c.model.encoder = "conformer"
  c.model.conformer_position_embeddings = "relative"  # rel_pos
  c.model.conformer_conv_kernel = 31  # fairseq depthwise_conv_kernel_size
  c.model.conformer_conv_norm = "batch_norm"
  c.lock()
  return c
