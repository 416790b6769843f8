"""configs/kmeans_hubert.py shrunk for tests: 4 dev utterances, K=4, a few passes."""

import ml_collections

from configs import kmeans_hubert


def checkpoint_config(checkpoint: str, data_dir: str) -> ml_collections.ConfigDict:
  """The HuBERT k-means job on `checkpoint`'s features of dev[:4] of the demo corpus."""
  config = kmeans_hubert.get_config()
  config.data.data_dir = data_dir
  config.data.split = "dev[:4]"
  config.features.checkpoint = checkpoint
  config.features.batch_size = 4
  config.features.pad_multiple = 160_000  # one padded length: one compilation per call
  config.fit.utterance_fraction = 1.0
  config.kmeans.num_clusters = 4
  config.kmeans.batch_size = 500
  config.kmeans.init_size = 500
  config.kmeans.num_init = 1
  config.kmeans.max_iter = 5
  config.units.examples_per_shard = 4
  return config
