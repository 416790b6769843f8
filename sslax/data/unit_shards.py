"""Unit shards and their manifest: what the k-means job writes and HuBERT pretraining reads.

`WORKDIR/units/` holds:

  centroids.npy                  f32[K, D] cluster centres
  kmeans.json                    how they were fitted: data, features, k-means settings,
                                 inertia (the job refuses to resume with other settings)
  shard-00003-of-00012.npz       units of examples [3E, 4E) of the split (E examples per
                                 shard, the split's TFDS order), one file per shard
  manifest.json                  written last, when every shard is complete

A shard file (numpy .npz, no pickles) holds:

  keys              str[n]      the examples' keys (`config.data.key_feature`)
  lengths           i64[n]      frames per example
  units             i16[F]      (i32 when K > 32768) the cluster of every frame, the
                                examples' frames one after another, F = sum(lengths)
  centroids_sha256  str[]       checksum of the centroids.npy they were assigned with

manifest.json: `num_clusters`, `label_rate_hz`, `dataset` (name, split, key_feature,
num_examples), `features` (MFCC parameters, or checkpoint and layer), `centroids`
(file, sha256, dim), `kmeans` (settings and fit results) and `shards`: per shard its file,
first_example, num_examples, num_frames, keys and sha256 (of the file's bytes).

Every file is written to a temporary name and renamed into place, so a file that exists
is complete.
"""

import hashlib
import io
import json
import os
import zipfile

import numpy as np

CENTROIDS_FILE = "centroids.npy"
KMEANS_FILE = "kmeans.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FIELDS = (
  "num_clusters",
  "label_rate_hz",
  "dataset",
  "features",
  "centroids",
  "kmeans",
  "shards",
)
SHARD_FIELDS = ("keys", "lengths", "units", "centroids_sha256")


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}.npz"


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` atomically (a temporary file renamed into place)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, value: dict) -> None:
  write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def write_npy(path: str, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  write_bytes(path, buffer.getvalue())


def units_dtype(num_clusters: int) -> np.dtype:
  return np.dtype(np.int16 if num_clusters <= 1 << 15 else np.int32)


def write_shard(
  path: str,
  keys: list[str],
  units: list[np.ndarray],
  *,
  num_clusters: int,
  centroids_sha256: str,
) -> None:
  """Writes one shard atomically: `units[i]` i32[frames_i] are example `keys[i]`'s units."""
  buffer = io.BytesIO()
  np.savez(
    buffer,
    keys=np.asarray(keys, dtype=str),
    lengths=np.asarray([len(u) for u in units], np.int64),
    units=np.concatenate([np.zeros(0, np.int64), *units]).astype(units_dtype(num_clusters)),
    centroids_sha256=np.asarray(centroids_sha256),
  )
  write_bytes(path, buffer.getvalue())


def read_shard(path: str, sha256: str | None = None) -> dict[str, np.ndarray]:
  """The arrays of a shard file (module docstring), checked for consistency.

  Raises ValueError naming the shard file when it cannot be read, lacks a field, its
  checksum differs from `sha256`, or its lengths do not add up to its units.
  """
  if sha256 is not None and file_sha256(path) != sha256:
    raise ValueError(f"units shard {path}: sha256 differs from the manifest's {sha256}")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"units shard {path} cannot be read: {error}") from error
  missing = [name for name in SHARD_FIELDS if name not in arrays]
  if missing:
    raise ValueError(f"units shard {path} lacks the fields {missing}")
  if len(arrays["keys"]) != len(arrays["lengths"]) or arrays["lengths"].sum() != len(
    arrays["units"]
  ):
    raise ValueError(
      f"units shard {path}: {len(arrays['keys'])} keys, {len(arrays['lengths'])} lengths "
      f"summing to {arrays['lengths'].sum()}, but {len(arrays['units'])} units"
    )
  return arrays


def read_manifest(units_dir: str) -> dict:
  """`units_dir/manifest.json`, with its fields checked (errors name the file and field)."""
  path = os.path.join(units_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: the k-means job has not finished")
  with open(path) as f:
    manifest = json.load(f)
  missing = [name for name in MANIFEST_FIELDS if name not in manifest]
  if missing:
    raise ValueError(f"{path} lacks the fields {missing}")
  for i, shard in enumerate(manifest["shards"]):
    if len(shard["keys"]) != shard["num_examples"]:
      raise ValueError(
        f"{path}: shards[{i}] ({shard['file']}) lists {len(shard['keys'])} keys "
        f"for num_examples={shard['num_examples']}"
      )
  return manifest
