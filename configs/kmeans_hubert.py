"""HuBERT iteration 2 targets: k-means (K=500) of a checkpoint's layer-6 hidden states.

Command:
  python -m sslax.main --config=configs/kmeans_hubert.py --workdir=/tmp/sslax-units-it2 \
    --config.features.checkpoint=CHECKPOINT --config.features.layer=6

CHECKPOINT is an sslax checkpoint directory (sslax/registry/checkpoint.py), a training
workdir (its latest checkpoint, e.g. a HuBERT iteration-1 run) or hf:HF_DIR (a
transformers wav2vec 2.0 or HuBERT checkpoint). The paper clusters layer 6 of the
iteration-1 Base model into 500 units (Large/X-Large: layer 9 of the iteration-2 Base);
the labels come at the model's frame rate (50 Hz for the 320x conv stack). Fit sample and
k-means settings as configs/kmeans_mfcc.py (fairseq's).

`:demo`: the demo corpus's iteration 2 (configs/demo_hubert.py): K=100 on the hidden
state of the iteration-1 demo run in /tmp/sslax-hubert-it1 whose units score the highest
PNMI on held-out speech (the dev split's voices): the job tries every state 0-4 and
clusters the best (`config.layer_choice`, sslax/units/layer_choice.py). In the small
4-layer demo model every Transformer layer scored below its input, the deeper the lower
(dev PNMI 0.566, 0.522, 0.492, 0.472, 0.467 for states 0-4 after 3,500 updates; the sweeps
are in benchmarks/RESULTS.md), so the paper's middle layer is not the best one there.
`:tiny` (tests): K=8 on layer 1 of configs/demo_hubert.py:iter1,tiny's 2 layers, the dev
split in one shard, fit settings of configs/kmeans_mfcc.py:tiny; give the checkpoint.
"""

from configs import common, kmeans_mfcc


def get_config(arg=None):
  if arg not in (None, "demo", "tiny"):
    raise ValueError(f"configs/kmeans_hubert.py takes no argument, 'demo' or 'tiny', got {arg!r}")
  c = kmeans_mfcc.get_config("tiny") if arg == "tiny" else common.kmeans_config()
  c.unlock()
  c.features.source = "checkpoint"
  c.features.layer = 6
  c.kmeans.num_clusters = 500
  if arg == "demo":
    c.features.checkpoint = "/tmp/sslax-hubert-it1"
    c.layer_choice.layers = (0, 1, 2, 3, 4)
    c.kmeans.num_clusters = 100
  if arg == "tiny":
    c.features.layer = 1
    c.features.batch_size = 16  # utterances per forward pass
    c.features.pad_multiple = 160_000  # 10 s: every dev utterance, one compiled shape
    c.kmeans.num_clusters = 8
    c.units.examples_per_shard = 64  # one shard: one forward-pass compilation per stage
  c.lock()
  return c
