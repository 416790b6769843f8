"""Cluster quality (phone purity, cluster purity, PNMI) against independent computations.

The metrics against scikit-learn's mutual information, scipy's entropy and hand-computed
tables; frame phones against a hand-worked case; the scorer on configs/kmeans_mfcc.py:tiny's
units against a scoring written here from the shard files and the corpus's JSON alignments,
and the command line on another split (units assigned afresh from the centroids).
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from sslax.data import splits
from sslax.data import unit_shards as shards
from sslax.data.demo_corpus import builder as demo_builder
from sslax.units import quality

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_scores_of_a_hand_computed_table():
  counts = np.array([[3, 1], [0, 4], [2, 0]])  # 3 phones x 2 units, 10 frames
  result = quality.scores(counts)
  assert result["phone_purity"] == pytest.approx((3 + 4) / 10)  # each unit's majority phone
  assert result["cluster_purity"] == pytest.approx((3 + 4 + 2) / 10)  # each phone's majority unit
  # Units that determine the phone: PNMI 1; independent of it: 0.
  assert quality.scores(np.diag([5, 2, 3]))["pnmi"] == pytest.approx(1.0)
  assert quality.scores(np.outer([1, 2, 3], [4, 1]))["pnmi"] == pytest.approx(0.0, abs=1e-12)


def test_scores_agree_with_scikit_learn_and_scipy():
  rng = np.random.default_rng(0)
  phones = rng.integers(0, 12, size=5_000)
  units = (phones * 3 + rng.integers(0, 9, size=5_000)) % 20  # related, not determined
  counts = np.zeros((12, 20), np.int64)
  np.add.at(counts, (phones, units), 1)
  result = quality.scores(counts)
  mutual = sklearn.metrics.mutual_info_score(phones, units)
  entropy = scipy.stats.entropy(np.bincount(phones))
  assert result["mutual_information"] == pytest.approx(mutual, rel=1e-12)
  assert result["phone_entropy"] == pytest.approx(entropy, rel=1e-12)
  assert result["pnmi"] == pytest.approx(mutual / entropy, rel=1e-12)
  majority_phone = [np.bincount(phones[units == z]).max() for z in np.unique(units)]
  majority_unit = [np.bincount(units[phones == y]).max() for y in np.unique(phones)]
  assert result["phone_purity"] == pytest.approx(sum(majority_phone) / 5_000, rel=1e-12)
  assert result["cluster_purity"] == pytest.approx(sum(majority_unit) / 5_000, rel=1e-12)


def test_frame_phones_take_the_phone_under_each_window_centre():
  spans = [("a", 100, 500), ("b", 500, 900)]
  # 100 Hz: centres 200, 360, 520, 680, 840, 1000; 50 Hz: 200, 520, 840, 1160.
  assert quality.frame_phones(spans, 6, 100) == ["a", "a", "b", "b", "b", "sil"]
  assert quality.frame_phones(spans, 4, 50) == ["a", "b", "b", "sil"]
  assert quality.frame_phones([("a", 300, 400)], 3, 100) == ["sil", "a", "sil"]
  assert quality.frame_phones([], 2, 50) == ["sil", "sil"]


def reference_counts(units_dir, keys=None):
  """(phone -> unit -> frames) from the shard files and dev.jsonl, one frame at a time."""
  with open(os.path.join(demo_builder.CORPUS_DIR, "dev.jsonl")) as f:
    alignments = {r["id"]: r["phonemes"] for r in map(json.loads, f)}
  pairs = []
  for entry in shards.read_manifest(units_dir)["shards"]:
    with np.load(os.path.join(units_dir, entry["file"])) as shard:
      ends = np.cumsum(shard["lengths"])
      for key, end, length in zip(shard["keys"], ends, shard["lengths"], strict=True):
        if keys is not None and str(key) not in keys:
          continue
        for t, unit in enumerate(shard["units"][end - length : end]):
          centre = t * 160 + 200  # 100 Hz frames of 400 samples
          phone = next((p for p, s, e in alignments[str(key)] if s <= centre < e), "sil")
          pairs.append((phone, int(unit)))
  return pairs


def check_against_reference(result, pairs):
  phones = [p for p, _ in pairs]
  units = [u for _, u in pairs]
  mutual = sklearn.metrics.mutual_info_score(phones, units)
  entropy = scipy.stats.entropy(np.unique(phones, return_counts=True)[1])
  assert result["frames"] == len(pairs)
  assert result["pnmi"] == pytest.approx(mutual / entropy, rel=1e-9)
  table = sklearn.metrics.cluster.contingency_matrix(phones, units)
  assert result["phone_purity"] == pytest.approx(table.max(0).sum() / len(pairs), rel=1e-12)
  assert result["cluster_purity"] == pytest.approx(table.max(1).sum() / len(pairs), rel=1e-12)
  assert result["phones"] == len(set(phones)) and result["units_used"] == len(set(units))


def test_scoring_a_units_dir(tiny_mfcc_units, demo_data_dir, tmp_path):
  result = quality.score_units_dir(
    tiny_mfcc_units, split="", data_dir=demo_data_dir, batch_size=8, pad_multiple=16_000
  )
  assert result["split"] == "dev" and result["utterances"] == 60 and result["num_clusters"] == 8
  check_against_reference(result, reference_counts(tiny_mfcc_units))
  assert 0 < result["silence_share"] < 0.5 and 0 < result["pnmi"] < 1

  # The command line on another split: MFCC of dev[:8] assigned to the centroids again,
  # the same units as the shards hold for those utterances.
  out = str(tmp_path / "quality.json")
  subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.units.quality",
      f"--units={tiny_mfcc_units}",
      "--split=dev[:8]",
      f"--data_dir={demo_data_dir}",
      f"--out={out}",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
    timeout=300,
  )
  written = json.load(open(out))
  first = shards.read_manifest(tiny_mfcc_units)["shards"][0]["keys"][:8]
  assert written["split"] == "dev[:8]" and written["utterances"] == 8
  check_against_reference(written, reference_counts(tiny_mfcc_units, set(first)))


def test_held_out_labels_follow_the_feature_sources_frame_centres(demo_data_dir):
  """A log-mel model's frames are centred on t x hop (offset 0), the conv stack's on
  t x hop + 200: tally_split must align phones with the source's own centres."""
  split = "dev[:3]"
  source, audio_key = splits.open_split("sslax_demo_corpus", split, demo_data_dir)
  data = ml_collections.ConfigDict(dict(name="sslax_demo_corpus", split=split, key_feature="id"))

  class Frames:
    """One 2-dim frame per 320 samples; every frame is unit 0."""

    def __init__(self, offset):
      self.frame_centre_offset = offset

    def __call__(self, waveforms):
      return [np.zeros((len(w) // 320, 2), np.float32) for w in waveforms]

  by_offset = {}
  for offset in (0, 200):
    tally = quality.tally_split(Frames(offset), np.zeros((1, 2)), 50.0, data, source, audio_key)
    by_offset[offset] = {phone: tally.counts[row, 0] for phone, row in tally.phones.items()}
    expected = {}
    for index in range(len(source)):
      example = source[index]
      spans = list(
        zip(
          [p.decode() for p in example["phonemes"]["phoneme"]],
          example["phonemes"]["start"].tolist(),
          example["phonemes"]["end"].tolist(),
          strict=True,
        )
      )
      # Frame t is centred on sample 320 t + offset; its phone is the span holding it.
      for t in range(len(example[audio_key]) // 320):
        centre = 320 * t + offset
        phone = next((p for p, a, b in spans if a <= centre < b), quality.SILENCE)
        expected[phone] = expected.get(phone, 0) + 1
    assert by_offset[offset] == expected, offset
  assert by_offset[0] != by_offset[200]
