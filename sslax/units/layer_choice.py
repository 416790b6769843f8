"""Which hidden state the k-means job clusters: the one whose units best predict phones.

HuBERT's later iterations take their targets from one Transformer layer of the previous
model (Hsu et al. 2021, "HuBERT: Self-Supervised Speech Representation Learning by Masked
Prediction of Hidden Units": layer 6 of the iteration-1 Base model, layer 9 of iteration-2
Base), the layer whose k-means units score the highest phone-normalised mutual information
(PNMI, sslax.units.quality) in the paper's analysis. Which layer that is depends on the
model and its training (in the small demo models the Transformer's input scores highest),
so the job can choose it instead of the user:

With `config.layer_choice.layers` set, k-means is fitted on each candidate hidden state
(the same fit sample, seed and settings as the job's own fit), the split
`config.layer_choice.split` (held-out voices with phone alignments, e.g. the demo corpus's
dev) is assigned to each layer's centroids and scored, and the job clusters the layer with
the highest PNMI (ties: the lower layer). The table is logged and written to
WORKDIR/units/layer_choice.json (atomically, by process 0); a rerun reads it back, so a
resumed job clusters the same layer. Every process scores the whole held-out split (it is
small) and so reaches the same choice.
"""

import concurrent.futures
import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

from sslax.core import sharding
from sslax.data import splits, unit_shards
from sslax.units import job, quality, sources

CHOICE_FILE = "layer_choice.json"


def _request(config: ml_collections.ConfigDict) -> dict:
  """What a recorded choice must match to be reused."""
  return dict(
    checkpoint=config.features.checkpoint,
    layers=[int(layer) for layer in config.layer_choice.layers],
    split=config.layer_choice.split,
    data=dict(name=config.data.name, split=config.data.split),
    seed=config.seed,
    fit=config.fit.to_dict(),
    kmeans=config.kmeans.to_dict(),
  )


def score_layers(config: ml_collections.ConfigDict) -> list[dict]:
  """[{'layer', 'pnmi', 'phone_purity', 'cluster_purity', 'units_used', 'frames'}] per
  candidate of `config.layer_choice.layers`, in that order (module docstring)."""
  mesh = sharding.make_mesh(config.mesh)
  data_source, audio_key = splits.open_split(
    config.data.name, config.data.split, config.data.data_dir
  )
  held_out = ml_collections.ConfigDict(
    dict(
      name=config.data.name,
      split=config.layer_choice.split,
      key_feature=config.data.key_feature,
    )
  )
  held_out_source, held_out_audio_key = splits.open_split(
    held_out.name, held_out.split, config.data.data_dir
  )
  shard_list = job.shard_ranges(len(data_source), config.units.examples_per_shard)
  mine = list(range(jax.process_index(), len(shard_list), jax.process_count()))
  rows = []
  with concurrent.futures.ThreadPoolExecutor(config.data.read_threads) as pool:
    for layer in config.layer_choice.layers:
      features = ml_collections.ConfigDict(config.features.to_dict())
      features.layer = int(layer)
      source = sources.make(features)
      fitted = job.fit(config, data_source, audio_key, source, shard_list, mine, mesh, pool)
      tally = quality.tally_split(
        source,
        fitted["centroids"],
        source.frame_rate_hz,
        held_out,
        held_out_source,
        held_out_audio_key,
      )
      if not tally.counts.sum():
        raise ValueError(f"{held_out.name}:{held_out.split} gave no frames to score")
      score = quality.scores(tally.counts)
      rows.append(
        dict(
          layer=int(layer),
          pnmi=score["pnmi"],
          phone_purity=score["phone_purity"],
          cluster_purity=score["cluster_purity"],
          units_used=int((tally.counts.sum(0) > 0).sum()),
          frames=int(tally.counts.sum()),
        )
      )
      logging.info(
        "layer choice: hidden state %d, PNMI %.4f on %s:%s",
        layer,
        score["pnmi"],
        held_out.name,
        held_out.split,
      )
  return rows


def best_layer(rows: list[dict]) -> int:
  """The layer of the highest PNMI; ties go to the lower layer."""
  return min(rows, key=lambda row: (-row["pnmi"], row["layer"]))["layer"]


def resolve(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`config` with `features.layer` set to the chosen layer (itself when there is no choice).

  Raises ValueError when the choice cannot apply (MFCC features, no candidates in range)
  or when WORKDIR's recorded choice was made for other settings.
  """
  choice = config.layer_choice
  if not choice.layers:
    return config
  if config.features.source != "checkpoint":
    raise ValueError(
      f"config.layer_choice.layers={tuple(choice.layers)} needs checkpoint features; "
      f"config.features.source={config.features.source!r}"
    )
  request = _request(config)
  path = os.path.join(workdir, "units", CHOICE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record["request"] != json.loads(json.dumps(request)):
      raise ValueError(
        f"{path} chose a layer for other settings ({record['request']}) than the config's "
        f"({request}); use a new workdir or delete the file to choose again"
      )
    logging.info("layer choice: reusing %s (hidden state %d)", path, record["layer"])
  else:
    rows = score_layers(config)
    record = dict(request=request, layer=best_layer(rows), scores=rows)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      unit_shards.write_json(path, record)
    multihost_utils.sync_global_devices("layer choice written")
  logging.info(
    "layer choice: clustering hidden state %d (PNMI on %s: %s)",
    record["layer"],
    choice.split,
    ", ".join(f"{row['layer']}: {row['pnmi']:.4f}" for row in record["scores"]),
  )
  chosen = ml_collections.ConfigDict(config.to_dict())
  chosen.features.layer = record["layer"]
  return chosen
