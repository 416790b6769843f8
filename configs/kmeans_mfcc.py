"""HuBERT iteration 1 targets: k-means (K=100) of 39-dim MFCC + deltas, 100 Hz unit shards.

Command:
  python -m sslax.main --config=configs/kmeans_mfcc.py --workdir=/tmp/sslax-units-mfcc

Writes /tmp/sslax-units-mfcc/units/ (centroids, one unit shard per 1,000 utterances,
manifest.json; layout in sslax/data/unit_shards.py). Settings as fairseq's
examples/hubert/simple_kmeans (learn_kmeans.py defaults, a 10% utterance sample), with
Lloyd passes in place of scikit-learn's mini-batches (`--config.kmeans.method=minibatch`
for those). On the demo corpus's train split (498 utterances, 242k frames; 24k fitted)
it takes 37 s on 2 shared CPU cores (benchmarks/RESULTS.md).

`--config=configs/kmeans_mfcc.py:tiny` (tests): 8 clusters, the dev split, shards of 16.
"""

from configs import common


def get_config(arg=None):
  if arg not in (None, "tiny"):
    raise ValueError(f"configs/kmeans_mfcc.py takes no argument or 'tiny', got {arg!r}")
  c = common.kmeans_config()
  if arg == "tiny":
    c.data.split = "dev"
    c.fit.utterance_fraction = 0.5
    c.fit.max_frames = 8_000
    c.kmeans.num_clusters = 8
    c.kmeans.batch_size = 1_000
    c.kmeans.init_size = 2_000
    c.kmeans.num_init = 2
    c.kmeans.max_iter = 20
    c.units.examples_per_shard = 16
  c.lock()
  return c
