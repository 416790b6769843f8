"""The k-means job: frame features -> bounded fit sample -> k-means on the mesh -> unit shards.

  python -m sslax.main --config=configs/kmeans_mfcc.py --workdir=DIR

1. Fit sample. A seeded random `config.fit.utterance_fraction` of the split's utterances
   is featurised, and a uniform sample of at most `config.fit.max_frames` of their frames
   is kept (a reservoir: every frame draws a random key and the smallest keys stay), split
   evenly over the processes, so host memory is bounded whatever the corpus size.
2. k-means (sslax.clustering.kmeans) over the mesh, each process contributing its sample.
   Process 0 writes `units/centroids.npy` and `units/kmeans.json`.
3. Assignment. The split is cut into shards of `config.units.examples_per_shard`
   consecutive examples; process p takes shards p, p + P, ...; every utterance of a shard
   is featurised and each frame assigned its nearest centroid; the shard file is written
   atomically.
4. Process 0 writes `units/manifest.json` once every shard exists (sslax/data/unit_shards.py).

Resuming: the centroids and every shard file already written are kept (files are renamed
into place, so one that exists is complete). `kmeans.json` must record the same data,
features and k-means settings as the config, and a kept shard must hold its range's
example count and name the current centroids; otherwise an error names the field or shard.
"""

import concurrent.futures
import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from sslax.clustering import kmeans
from sslax.core import sharding, workdirs
from sslax.data import splits, unit_shards
from sslax.units import sources

_FIT_STREAM, _RESERVOIR_STREAM = 0, 1  # independent random streams from config.seed
_ASSIGN_ROWS = 8_192  # frames per assignment call (one compiled shape)


class Reservoir:
  """A uniform sample without replacement of at most `capacity` rows of a stream.

  Each row draws a uniform key and the `capacity` smallest keys are kept (bottom-k
  sampling); the buffer is cut back whenever it reaches twice the capacity, so memory
  stays below 2 x capacity rows plus the rows being added.
  """

  def __init__(self, capacity: int, rng: np.random.Generator):
    self._capacity = capacity
    self._rng = rng
    self._keys = np.zeros(0)
    self._rows = []
    self.seen = 0  # rows offered so far

  def add(self, rows_NxD: np.ndarray) -> None:
    self.seen += len(rows_NxD)
    self._keys = np.concatenate([self._keys, self._rng.random(len(rows_NxD))])
    self._rows.append(rows_NxD)
    if len(self._keys) >= 2 * self._capacity:
      self._shrink()

  def _shrink(self) -> None:
    rows = np.concatenate(self._rows)
    keep = np.argsort(self._keys, kind="stable")[: self._capacity]
    self._keys, self._rows = self._keys[keep], [rows[keep]]

  def sample(self, dim: int) -> np.ndarray:
    """f32[min(capacity, seen), dim]: the kept rows."""
    if not self._rows:
      return np.zeros((0, dim), np.float32)
    self._shrink()
    return self._rows[0].astype(np.float32)


def shard_ranges(num_examples: int, examples_per_shard: int) -> list[range]:
  """Example index ranges of the unit shards: consecutive, `examples_per_shard` each."""
  if examples_per_shard < 1:
    raise ValueError(f"config.units.examples_per_shard={examples_per_shard} must be positive")
  return [
    range(start, min(start + examples_per_shard, num_examples))
    for start in range(0, num_examples, examples_per_shard)
  ]


def read_examples(source, audio_key, data, indices, pool, where) -> tuple[list, list]:
  """(keys, f32[S] waveforms in [-1, 1]) of examples `indices` of a
  `records.PreparedSplit` (stored samples or encoded audio); errors name `where`."""

  def read(index):
    index = int(index)
    samples = splits.read_audio(source, index, audio_key, f"{data.name}:{data.split} ({where})")
    try:
      key = source.get(index, data.key_feature)
    except Exception as error:
      raise RuntimeError(
        f"cannot read example {index} of {data.name}:{data.split} ({where})"
      ) from error
    return key.decode() if isinstance(key, bytes) else str(key), samples

  pairs = list(pool.map(read, indices))
  return [k for k, _ in pairs], [w for _, w in pairs]


def assign_units(features: list[np.ndarray], centroids_KxD: jax.Array) -> list[np.ndarray]:
  """i32[T_u] nearest-centroid index of every frame of each f32[T_u, D] utterance."""
  lengths = [len(f) for f in features]
  x_FxD = np.concatenate([np.zeros((0, centroids_KxD.shape[1]), np.float32), *features])
  padded = -(-len(x_FxD) // _ASSIGN_ROWS) * _ASSIGN_ROWS
  x_FxD = np.pad(x_FxD, ((0, padded - len(x_FxD)), (0, 0)))
  labels = [
    np.asarray(kmeans.assign(x_FxD[i : i + _ASSIGN_ROWS], centroids_KxD)[0])
    for i in range(0, padded, _ASSIGN_ROWS)
  ]
  labels_F = np.concatenate([np.zeros(0, np.int32), *labels])[: sum(lengths)]
  return np.split(labels_F, np.cumsum(lengths)[:-1]) if lengths else []


def _settings(config: ml_collections.ConfigDict, source, num_examples: int) -> dict:
  """What the centroids depend on: kmeans.json must match it to resume."""
  return dict(
    seed=config.seed,
    data=dict(
      name=config.data.name,
      split=config.data.split,
      key_feature=config.data.key_feature,
      num_examples=num_examples,
    ),
    features=source.description,
    fit=config.fit.to_dict(),
    kmeans=config.kmeans.to_dict(),
  )


def _check_resumable(path: str, settings: dict) -> None:
  with open(path) as f:
    recorded = json.load(f)["settings"]
  for group, values in settings.items():
    fields = values.items() if isinstance(values, dict) else [(None, values)]
    for name, value in fields:
      old = recorded.get(group) if name is None else recorded.get(group, {}).get(name)
      if json.loads(json.dumps(value)) != old:
        field = group if name is None else f"{group}.{name}"
        raise ValueError(
          f"{path} was fitted with {field}={old!r} but the config says {value!r}; "
          "use a new workdir (or delete its units/) to fit again"
        )


def fit(config, data_source, audio_key, source, shard_list, mine, mesh, pool) -> dict:
  """Streams the fit sample and runs k-means: {'centroids', 'record' (for kmeans.json)}."""
  num_examples = len(data_source)
  rng = np.random.default_rng([config.seed, _FIT_STREAM])
  chosen = rng.random(num_examples) < config.fit.utterance_fraction
  capacity = -(-config.fit.max_frames // jax.process_count())
  reservoir = Reservoir(
    capacity, np.random.default_rng([config.seed, _RESERVOIR_STREAM, jax.process_index()])
  )
  utterances = 0
  for index in mine:
    picked = [i for i in shard_list[index] if chosen[i]]
    if picked:
      _, waveforms = read_examples(
        data_source, audio_key, config.data, picked, pool, f"fit sample, units shard {index}"
      )
      for frames in source(waveforms):
        reservoir.add(frames)
      utterances += len(picked)
  sample = reservoir.sample(source.dim)
  total = int(multihost_utils.process_allgather(np.asarray([len(sample)])).sum())
  if total < config.kmeans.num_clusters:
    raise ValueError(
      f"the fit sample has {total} frames for config.kmeans.num_clusters="
      f"{config.kmeans.num_clusters}; raise config.fit.utterance_fraction or max_frames"
    )
  logging.info(
    "fit sample: %d of %d frames from %d utterances (this process); %d in all",
    len(sample),
    reservoir.seen,
    utterances,
    total,
  )
  k = config.kmeans
  x_MxCxD, w_MxC = kmeans.layout(sample, mesh, batch_size=k.batch_size, seed=config.seed)
  result = kmeans.fit(
    x_MxCxD,
    w_MxC,
    num_clusters=k.num_clusters,
    method=k.method,
    max_iter=k.max_iter,
    tol=k.tol,
    max_no_improvement=k.max_no_improvement,
    init_size=k.init_size,
    num_init=k.num_init,
    seed=config.seed,
  )
  logging.info(
    "k-means: inertia %.6g (%.4f per frame) after %d iterations, %d clusters re-seeded",
    result.inertia,
    result.inertia / total,
    result.iterations,
    result.num_reseeded,
  )
  return dict(
    centroids=result.centroids,
    record=dict(
      fit_frames=total,
      inertia=result.inertia,
      inertia_per_frame=result.inertia / total,
      iterations=result.iterations,
      num_reseeded=result.num_reseeded,
    ),
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fits k-means and writes `workdir/units/` as the module docstring says; resumes."""
  workdirs.write_config(config, workdir)
  units_dir = os.path.join(workdir, "units")
  os.makedirs(units_dir, exist_ok=True)
  is_primary = jax.process_index() == 0

  # ---- Mesh, data, features ---------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  data_source, audio_key = splits.open_split(
    config.data.name, config.data.split, config.data.data_dir
  )
  if config.data.key_feature not in data_source.features:
    raise ValueError(
      f"config.data.key_feature={config.data.key_feature!r} is not a feature of "
      f"{config.data.name}: {sorted(data_source.features)}"
    )
  shard_list = shard_ranges(len(data_source), config.units.examples_per_shard)
  mine = list(range(jax.process_index(), len(shard_list), jax.process_count()))
  source = sources.make(config.features)
  settings = _settings(config, source, len(data_source))
  # The readers' threads end on every exit path (an error cancels the reads not started).
  with concurrent.futures.ThreadPoolExecutor(config.data.read_threads) as pool:
    # ---- Centroids: fit, or keep those of an earlier run ---------------------------------
    centroids_path = os.path.join(units_dir, unit_shards.CENTROIDS_FILE)
    kmeans_path = os.path.join(units_dir, unit_shards.KMEANS_FILE)
    if os.path.exists(kmeans_path):
      _check_resumable(kmeans_path, settings)
      logging.info("resuming with the centroids in %s", centroids_path)
    else:
      fitted = fit(config, data_source, audio_key, source, shard_list, mine, mesh, pool)
      if is_primary:
        unit_shards.write_npy(centroids_path, fitted["centroids"])
        record = dict(
          settings=settings,
          centroids_sha256=unit_shards.file_sha256(centroids_path),
          **fitted["record"],
        )
        unit_shards.write_json(kmeans_path, record)  # last: its existence marks a finished fit
    multihost_utils.sync_global_devices("k-means centroids written")
    centroids_sha256 = unit_shards.file_sha256(centroids_path)
    with open(kmeans_path) as f:
      fit_record = json.load(f)
    if fit_record["centroids_sha256"] != centroids_sha256:
      raise ValueError(f"{centroids_path} is not the file {kmeans_path} records (sha256 differs)")
    centroids_KxD = np.load(centroids_path)
    expected = (config.kmeans.num_clusters, source.dim)
    if centroids_KxD.shape != expected:
      raise ValueError(
        f"{centroids_path} holds {centroids_KxD.shape} centroids; expected {expected}"
      )
    centroids_on_device = jax.device_put(centroids_KxD, jax.local_devices()[0])

    # ---- Assignment: one shard at a time, skipping complete ones -------------------------
    skipped = 0
    for index in mine:
      path = os.path.join(units_dir, unit_shards.shard_name(index, len(shard_list)))
      if os.path.exists(path):
        kept = unit_shards.read_shard(path)
        if str(kept["centroids_sha256"]) != centroids_sha256:
          raise ValueError(
            f"units shard {path} was assigned with other centroids than {centroids_path}; "
            "delete the shard to assign it again"
          )
        if len(kept["keys"]) != len(shard_list[index]):
          raise ValueError(
            f"units shard {path} holds {len(kept['keys'])} examples; shard {index} of "
            f"{config.data.name}:{config.data.split} has {len(shard_list[index])}"
          )
        skipped += 1
        continue
      keys, waveforms = read_examples(
        data_source, audio_key, config.data, shard_list[index], pool, f"units shard {path}"
      )
      units = assign_units(source(waveforms), centroids_on_device)
      unit_shards.write_shard(
        path,
        keys,
        units,
        num_clusters=config.kmeans.num_clusters,
        centroids_sha256=centroids_sha256,
      )
      logging.info("wrote %s: %d examples, %d frames", path, len(keys), sum(map(len, units)))
    logging.info("%d shards of this process were already complete", skipped)

  # ---- Manifest ----------------------------------------------------------------------
  multihost_utils.sync_global_devices("unit shards written")
  if is_primary:
    entries = []
    for index, examples in enumerate(shard_list):
      name = unit_shards.shard_name(index, len(shard_list))
      shard = unit_shards.read_shard(os.path.join(units_dir, name))
      entries.append(
        dict(
          file=name,
          first_example=examples.start,
          num_examples=len(examples),
          num_frames=int(shard["lengths"].sum()),
          keys=shard["keys"].tolist(),
          sha256=unit_shards.file_sha256(os.path.join(units_dir, name)),
        )
      )
    manifest = dict(
      num_clusters=config.kmeans.num_clusters,
      label_rate_hz=source.frame_rate_hz,
      dataset=settings["data"],
      features=source.description,
      centroids=dict(file=unit_shards.CENTROIDS_FILE, sha256=centroids_sha256, dim=source.dim),
      kmeans=fit_record,
      shards=entries,
    )
    unit_shards.write_json(os.path.join(units_dir, unit_shards.MANIFEST_FILE), manifest)
    logging.info(
      "wrote %s: %d shards", os.path.join(units_dir, unit_shards.MANIFEST_FILE), len(entries)
    )
