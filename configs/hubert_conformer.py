"""HuBERT Base with a conformer encoder (issue 6: every objective with every encoder).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/hubert_conformer.py:iter2 --workdir=DIR \
    --config.data.name=librispeech \
    --config.data.split=train_clean100+train_clean360+train_other500 \
    --config.units.dir=KMEANS_WORKDIR/units

Sources: configs/hubert_base.py (fairseq hubert_base_librispeech.yaml, iter1 / iter2 by
argument) with fairseq's conformer layer in place of the Transformer, as
wav2vec2_conformer_*.yaml do for wav2vec 2.0 (`layer_type: conformer`, `pos_enc_type:
rel_pos`, depthwise kernel 31, batch norm). fairseq publishes no HuBERT conformer recipe;
this pairing is a config change, not a published model.
`python -m sslax.describe --config=configs/hubert_conformer.py` prints its size and FLOPs.
"""

from configs import hubert_base


def get_config(arg=None):
  c = hubert_base.get_config(arg)
  c.unlock()
  c.model.encoder = "conformer"
  c.model.conformer_position_embeddings = "relative"  # rel_pos
  c.model.conformer_conv_kernel = 31
  c.model.conformer_conv_norm = "batch_norm"
  c.lock()
  return c
