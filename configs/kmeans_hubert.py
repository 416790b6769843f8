"""HuBERT iteration 2 targets: k-means (K=500) of a checkpoint's layer-6 hidden states.

Command:
  python -m sslax.main --config=configs/kmeans_hubert.py --workdir=/tmp/sslax-units-it2 \
    --config.features.checkpoint=CHECKPOINT --config.features.layer=6

CHECKPOINT is an sslax checkpoint directory (sslax/interop/checkpoint.py) or hf:HF_DIR
(a transformers wav2vec 2.0 checkpoint). The paper clusters layer 6 of the iteration-1
Base model into 500 units (Large/X-Large: layer 9 of the iteration-2 Base); the labels
come at the model's frame rate (50 Hz for the 320x conv stack). Fit sample and k-means
settings as configs/kmeans_mfcc.py (fairseq's).
"""

from configs import common


def get_config(arg=None):
  if arg is not None:
    raise ValueError(f"configs/kmeans_hubert.py takes no argument, got {arg!r}")
  c = common.kmeans_config()
  c.features.source = "checkpoint"
  c.features.layer = 6
  c.kmeans.num_clusters = 500
  c.lock()
  return c
