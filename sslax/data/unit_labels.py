"""HuBERT's targets read back from unit shards: the units of an example, found by its key.

`UnitLabels` reads `manifest.json` (layout in sslax/data/unit_shards.py) once and keeps only
an index, key -> (shard, row). A shard file is read when one of its keys is first asked
for and kept in a small LRU cache of `cache_shards` decoded shards, so host memory stays
bounded whatever the corpus size; every read checks the file's sha256, keys, centroids and
unit values against the manifest.

Errors name the manifest, shard or key:
* on construction: the manifest's `num_clusters` is not the model's K; its
  `label_rate_hz` is not `config.units.label_rate`, or that rate is neither a whole
  multiple nor a whole divisor of the model's frame rate; a shard file is missing; a key
  is in two shards;
* per example: the key has no units; their count is off by more than one model frame
  from the utterance's F frames (`backbone.num_frames`) at the label rate,
  round(F · label_rate / frame_rate). One frame is fairseq's rounding: Kaldi MFCC frames at
  100 Hz are 2F - 1 or 2F for F model frames at 50 Hz, a model layer's units exactly F.

`window` cuts the units under an audio crop as fairseq's HubertDataset does
(`collater_frm_label`): they start at round(start · label_rate / 16 kHz) and the batch
holds round(crop samples · label_rate / 16 kHz) of them.
"""

import collections
from collections.abc import Callable
import math
import os
import threading

import ml_collections
import numpy as np

from sslax.data import unit_shards
from sslax.models import backbone
from sslax.objectives import hubert as objective


def num_labels(num_samples: int, label_rate: float) -> int:
  """Units under `num_samples` samples of audio: round(num_samples · label_rate / 16 kHz)."""
  return int(round(num_samples * label_rate / backbone.SAMPLE_RATE_HZ))


class UnitLabels:
  """The units of every example a units dir holds, by key (module docstring).

  Thread-safe: the input pipeline asks from several threads at once.
  """

  def __init__(
    self,
    units_dir: str,
    *,
    num_clusters: int,
    label_rate: float,
    frame_rate: float,
    frames_fn: Callable[[int], int],
    cache_shards: int,
  ):
    """Indexes `units_dir/manifest.json` and checks it against the model.

    Args:
      units_dir: the k-means job's `WORKDIR/units`.
      num_clusters: K of the model's label set (`config.model.num_classes[0]`).
      label_rate: units per second the config expects (`config.units.label_rate`).
      frame_rate: the model's frames per second (`backbone.frame_rate_hz`).
      frames_fn: samples -> the model's frames (`backbone.num_frames`).
      cache_shards: decoded shards kept in memory (>= 1).
    """
    self._dir = units_dir
    self._manifest_path = os.path.join(units_dir, unit_shards.MANIFEST_FILE)
    manifest = unit_shards.read_manifest(units_dir)
    if manifest["num_clusters"] != num_clusters:
      raise ValueError(
        f"{self._manifest_path} has num_clusters={manifest['num_clusters']}, but the model "
        f"predicts config.model.num_classes=({num_clusters},) clusters"
      )
    if manifest["label_rate_hz"] != label_rate:
      raise ValueError(
        f"{self._manifest_path} has label_rate_hz={manifest['label_rate_hz']}, but "
        f"config.units.label_rate={label_rate}"
      )
    ratio = label_rate / frame_rate
    whole = ratio if ratio >= 1 else 1 / ratio
    if whole != round(whole):
      raise ValueError(
        f"config.units.label_rate={label_rate} Hz is neither a whole multiple nor a whole "
        f"divisor of the model's frame rate, {frame_rate} Hz"
      )
    if cache_shards < 1:
      raise ValueError(f"config.units.cache_shards={cache_shards} must be at least 1")
    self.label_rate = label_rate
    self.key_feature = manifest["dataset"]["key_feature"]
    self._num_clusters = num_clusters
    self._frame_rate = frame_rate
    self._frames_fn = frames_fn
    self._tolerance = math.ceil(ratio)  # one model frame, in units
    self._centroids_sha256 = manifest["centroids"]["sha256"]
    self._shards = manifest["shards"]
    self._index = {}  # key -> (shard, row)
    for s, entry in enumerate(self._shards):
      path = os.path.join(units_dir, entry["file"])
      if not os.path.exists(path):
        raise FileNotFoundError(f"units shard {path}, listed in {self._manifest_path}, is missing")
      for row, key in enumerate(entry["keys"]):
        if key in self._index:
          other = self._shards[self._index[key][0]]["file"]
          raise ValueError(f"{self._manifest_path}: key {key!r} is in {other} and {entry['file']}")
        self._index[key] = (s, row)
    self._cache = collections.OrderedDict()  # shard -> (i64[n + 1] offsets, int[F] units)
    self._capacity = cache_shards
    self._lock = threading.Lock()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "UnitLabels":
    """The units `config.units` names, for the model of `config.model` (one label set)."""
    if len(config.model.num_classes) != 1:
      raise ValueError(
        f"config.model.num_classes={tuple(config.model.num_classes)}: the HuBERT job reads "
        "one units dir (config.units.dir), so one label set"
      )
    if not config.units.dir:
      raise ValueError("config.units.dir is empty: give the k-means job's WORKDIR/units")
    return cls(
      config.units.dir,
      num_clusters=config.model.num_classes[0],
      label_rate=config.units.label_rate,
      frame_rate=backbone.frame_rate_hz(config.model),
      frames_fn=lambda n: int(backbone.num_frames(n, config.model)),
      cache_shards=config.units.cache_shards,
    )

  def __len__(self) -> int:
    return len(self._index)

  def _read(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(i64[n + 1] offsets, int[F] units) of a shard file, checked against the manifest."""
    entry = self._shards[shard]
    path = os.path.join(self._dir, entry["file"])
    if not os.path.exists(path):
      raise FileNotFoundError(f"units shard {path}, listed in {self._manifest_path}, is missing")
    arrays = unit_shards.read_shard(path, entry["sha256"])
    if arrays["keys"].tolist() != entry["keys"]:
      raise ValueError(f"units shard {path} holds other keys than {self._manifest_path} lists")
    if str(arrays["centroids_sha256"]) != self._centroids_sha256:
      raise ValueError(f"units shard {path} was assigned with other centroids than the manifest's")
    units = arrays["units"]
    if len(units) and (units.min() < 0 or units.max() >= self._num_clusters):
      raise ValueError(
        f"units shard {path} holds units in [{units.min()}, {units.max()}], outside "
        f"[0, {self._num_clusters})"
      )
    return np.concatenate([[0], np.cumsum(arrays["lengths"])]), units

  def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """A decoded shard from the LRU cache, read on a miss."""
    with self._lock:
      if shard in self._cache:
        self._cache.move_to_end(shard)
        return self._cache[shard]
    decoded = self._read(shard)  # outside the lock: other threads keep going
    with self._lock:
      self._cache[shard] = decoded
      self._cache.move_to_end(shard)
      while len(self._cache) > self._capacity:
        self._cache.popitem(last=False)
    return decoded

  def units(self, key: str, num_samples: int) -> np.ndarray:
    """i32[L]: the units of example `key`, whose audio has `num_samples` samples.

    Raises:
      ValueError: no shard holds `key`, or L is off by more than one model frame (module
        docstring).
    """
    if key not in self._index:
      raise ValueError(f"example {key!r} has no units in {self._manifest_path}")
    shard, row = self._index[key]
    offsets, units = self._shard(shard)
    found = units[offsets[row] : offsets[row + 1]].astype(np.int32)
    frames = self._frames_fn(num_samples)
    expected = int(round(frames * self.label_rate / self._frame_rate))
    if abs(len(found) - expected) > self._tolerance:
      raise ValueError(
        f"units shard {os.path.join(self._dir, self._shards[shard]['file'])}: example "
        f"{key!r} has {len(found)} units, but its {num_samples} samples make {frames} model "
        f"frames, {expected} units at {self.label_rate} Hz (+-{self._tolerance}, one frame)"
      )
    return found

  def window(self, key: str, num_samples: int, start: int, length: int) -> np.ndarray:
    """i32[length]: the units of example `key` under the audio crop starting at sample
    `start`, from unit round(start · label_rate / 16 kHz) on; IGNORE_LABEL (-1) past its
    last unit. `length` is `num_labels` of the batch's crop length."""
    units = self.units(key, num_samples)
    first = num_labels(start, self.label_rate)
    out = np.full(length, objective.IGNORE_LABEL, np.int32)
    piece = units[first : first + length]
    out[: len(piece)] = piece
    return out
