"""Cluster quality of frame units against frame phone labels, as the HuBERT paper measures it.

Hsu et al. 2021, the analysis of clustering quality. Over all frames, with p(y, z) the
joint distribution of phone y and unit z:

  phone purity   = sum_z max_y p(y, z) = E_z[max_y p(y | z)]  (a unit's majority phone)
  cluster purity = sum_y max_z p(y, z) = E_y[max_z p(z | y)]  (a phone's majority unit)
  PNMI           = I(y; z) / H(y)  (phone-normalised mutual information: the share of the
                   phone label's uncertainty a unit removes; 1 when units determine phones)

Frame t of units at label rate r (hop h = 16,000 / r samples) takes the phone under its
window's centre, sample t·h + 200: both Kaldi MFCC frames and fairseq's conv stack see
400 samples (25 ms) from t·h. Samples outside every phone span are silence, `SILENCE`.

Command (writes JSON atomically):
  python -m sslax.units.quality --units=KMEANS_WORKDIR/units --out=FILE.json [--split=dev]

The examples need a `phonemes` feature of [phoneme, start, end] spans (the demo corpus's
espeak-ng alignments). Without --split the units dir's own shards are scored; with another
split of the same dataset, its audio is featurised as the manifest's `features` say (MFCC,
or the checkpoint's layer) and assigned to the manifest's centroids first, so units
fitted on train can be scored on held-out voices.
"""

import argparse
import concurrent.futures
import json
import os
import sys

import jax
import ml_collections
import numpy as np

from sslax.data import decode, splits, unit_shards
from sslax.units import job, sources

SILENCE = "sil"
WINDOW_SAMPLES = 400  # samples every unit frame sees (Kaldi MFCC window, conv receptive field)
PHONES_FEATURE = "phonemes"
_CHUNK = 256  # examples featurised per call: bounds memory, few recompilations of the model


def scores(counts_PxK: np.ndarray) -> dict[str, float]:
  """Phone purity, cluster purity and PNMI (module docstring) of a contingency table.

  Args:
    counts_PxK: frames with phone p and unit k (non-negative, not all zero).

  Returns:
    {'phone_purity', 'cluster_purity', 'pnmi', 'phone_entropy' (nats), 'mutual_information'
    (nats)}, computed in float64.
  """
  joint = np.asarray(counts_PxK, np.float64)
  joint = joint / joint.sum()
  p_phone, p_unit = joint.sum(1), joint.sum(0)
  nonzero = joint > 0
  outer = np.outer(p_phone, p_unit)
  mutual = float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))
  entropy = float(-np.sum(p_phone[p_phone > 0] * np.log(p_phone[p_phone > 0])))
  return dict(
    phone_purity=float(joint.max(0).sum()),
    cluster_purity=float(joint.max(1).sum()),
    pnmi=mutual / entropy if entropy > 0 else 0.0,
    phone_entropy=entropy,
    mutual_information=mutual,
  )


def frame_spans(
  starts, ends, num_frames: int, label_rate: float, centre_offset: int = WINDOW_SAMPLES // 2
) -> np.ndarray:
  """i64[num_frames]: the span under each frame's centre, -1 outside every span.

  Frame t is centred on sample t * (16,000 / label_rate) + centre_offset (the module
  docstring's 200 by default; `sslax.models.backbone.frame_centre_offset` for a model's).

  Args:
    starts, ends: the spans' first and one-past-last samples, ordered, not overlapping.
    num_frames: frames of the utterance.
    label_rate: frames per second.
    centre_offset: sample at the centre of frame 0.
  """
  starts = np.asarray(starts, np.int64).reshape(-1)
  ends = np.asarray(ends, np.int64).reshape(-1)
  if not len(starts):
    return np.full(num_frames, -1, np.int64)
  centres = np.arange(num_frames) * (decode.SAMPLE_RATE / label_rate) + centre_offset
  span = np.searchsorted(starts, centres, side="right") - 1  # the last span starting at or before
  inside = (span >= 0) & (centres < ends[np.maximum(span, 0)])
  return np.where(inside, span, -1)


def frame_phones(
  spans, num_frames: int, label_rate: float, centre_offset: int = WINDOW_SAMPLES // 2
) -> list[str]:
  """The phone of each of `num_frames` frames at `label_rate` Hz (module docstring).

  Args:
    spans: (phone, start, end) in samples (end exclusive), ordered, not overlapping.
    num_frames: frames of the utterance's units.
    label_rate: frames per second.
    centre_offset: sample at the centre of frame 0 (`frame_spans`).
  """
  index = frame_spans(
    [s for _, s, _ in spans], [e for _, _, e in spans], num_frames, label_rate, centre_offset
  )
  return [spans[i][0] if i >= 0 else SILENCE for i in index.tolist()]


class Tally:
  """A growing phone x unit contingency table."""

  def __init__(self, num_clusters: int):
    self.phones: dict[str, int] = {}
    self.counts = np.zeros((0, num_clusters), np.int64)
    self.utterances = 0

  def add(self, phones: list[str], units: np.ndarray) -> None:
    """Counts one utterance: `phones[t]` and int `units[t]` of each frame t."""
    for phone in phones:
      if phone not in self.phones:
        self.phones[phone] = len(self.phones)
    if len(self.phones) > len(self.counts):
      grow = len(self.phones) - len(self.counts)
      self.counts = np.concatenate([self.counts, np.zeros((grow, self.counts.shape[1]), np.int64)])
    rows = np.asarray([self.phones[p] for p in phones], np.int64)
    np.add.at(self.counts, (rows, np.asarray(units, np.int64)), 1)
    self.utterances += 1


def _spans(example: dict, where: str) -> list[tuple[str, int, int]]:
  if PHONES_FEATURE not in example:
    raise ValueError(f"{where} has no {PHONES_FEATURE!r} feature: no phone alignments to score")
  phones = example[PHONES_FEATURE]
  names = [p.decode() if isinstance(p, bytes) else str(p) for p in phones["phoneme"]]
  return list(zip(names, map(int, phones["start"]), map(int, phones["end"]), strict=True))


def _key(example: dict, key_feature: str) -> str:
  key = example[key_feature]
  return key.decode() if isinstance(key, bytes) else str(key)


def tally_split(featurise, centroids_KxD, label_rate, data, source, audio_key) -> Tally:
  """The phone x unit table of every example of an open split, assigned to `centroids_KxD`.

  Args:
    featurise: waveforms -> f32[T_u, D] frames at `label_rate` Hz (a sslax.units.sources
      source; its `frame_centre_offset` aligns the phone labels to its frames).
    centroids_KxD: the k-means centroids.
    label_rate: frames per second of the features.
    data: `name`, `split` and `key_feature` of the split (for error messages).
    source, audio_key: the open split (sslax.data.splits.open_split).
  """
  tally = Tally(len(centroids_KxD))
  where = f"{data.name}:{data.split}"
  on_device = jax.device_put(np.asarray(centroids_KxD, np.float32), jax.local_devices()[0])
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    for first in range(0, len(source), _CHUNK):
      indices = list(range(first, min(first + _CHUNK, len(source))))
      _, waveforms = job.read_examples(source, audio_key, data, indices, pool, "quality")
      units = job.assign_units(featurise(waveforms), on_device)
      for index, unit_row in zip(indices, units, strict=True):
        spans = _spans(source[index], where)
        phones = frame_phones(spans, len(unit_row), label_rate, featurise.frame_centre_offset)
        tally.add(phones, unit_row)
  return tally


def score_units_dir(
  units_dir: str, *, split: str, data_dir: str, batch_size: int, pad_multiple: int
) -> dict:
  """Scores the units of `units_dir` on `split` ('' = its own); the JSON `main` writes."""
  manifest = unit_shards.read_manifest(units_dir)
  dataset = manifest["dataset"]
  split = split or dataset["split"]
  where = f"{dataset['name']}:{split}"
  source, audio_key = splits.open_split(dataset["name"], split, data_dir)
  rate = manifest["label_rate_hz"]
  # The features as the units were made (a checkpoint's model is loaded): they set the
  # frames' alignment to the phone labels and featurise another split.
  featurise = sources.from_manifest(manifest["features"], batch_size, pad_multiple)
  tally = Tally(manifest["num_clusters"])
  if split == dataset["split"]:
    for entry in manifest["shards"]:
      path = os.path.join(units_dir, entry["file"])
      shard = unit_shards.read_shard(path, entry["sha256"])
      offsets = np.concatenate([[0], np.cumsum(shard["lengths"])])
      for row, key in enumerate(shard["keys"].tolist()):
        example = source[entry["first_example"] + row]
        if _key(example, dataset["key_feature"]) != key:
          raise ValueError(
            f"units shard {path} row {row} is {key!r}, but example "
            f"{entry['first_example'] + row} of {where} is not"
          )
        units = shard["units"][offsets[row] : offsets[row + 1]]
        phones = frame_phones(
          _spans(example, where), len(units), rate, featurise.frame_centre_offset
        )
        tally.add(phones, units)
  else:
    centroids = np.load(os.path.join(units_dir, manifest["centroids"]["file"]))
    data = ml_collections.ConfigDict(
      dict(name=dataset["name"], split=split, key_feature=dataset["key_feature"])
    )
    tally = tally_split(featurise, centroids, rate, data, source, audio_key)
  if not tally.counts.sum():
    raise ValueError(f"{where} gave no frames to score with the units of {units_dir}")
  silence = tally.counts[tally.phones[SILENCE]].sum() if SILENCE in tally.phones else 0
  return dict(
    units_dir=units_dir,
    dataset=dataset["name"],
    split=split,
    features=manifest["features"],
    num_clusters=manifest["num_clusters"],
    label_rate_hz=rate,
    utterances=tally.utterances,
    frames=int(tally.counts.sum()),
    phones=len(tally.phones),
    units_used=int((tally.counts.sum(0) > 0).sum()),
    silence_share=float(silence / tally.counts.sum()),
    **scores(tally.counts),
  )


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m sslax.units.quality", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--units", required=True, help="the k-means job's WORKDIR/units")
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--split", default="", help="split to score; '' = the units' own")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir ('' = the default)")
  parser.add_argument("--batch_size", type=int, default=8, help="checkpoint features: batch")
  parser.add_argument("--pad_multiple", type=int, default=16_000, help="checkpoint: padding")
  args = parser.parse_args(argv)
  result = score_units_dir(
    args.units,
    split=args.split,
    data_dir=args.data_dir,
    batch_size=args.batch_size,
    pad_multiple=args.pad_multiple,
  )
  unit_shards.write_json(args.out, result)
  print(json.dumps({k: v for k, v in result.items() if k != "features"}, indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])
