"""Pretrains configs/demo.py's wav2vec 2.0 on a machine without TensorFlow (a bare GPU).

  python benchmarks/pretrain_demo_numpy.py --config=configs/demo.py --out=DIR \
    --config.total_steps=15000 --config.data.batch_size=32 --config.compute_dtype=bfloat16

The accelerator machines lent to this project have jax, flax, optax and orbax but not
TensorFlow, so `sslax.main`'s tf.data stream cannot run there. This script runs the same
jitted, sharded update (`wav2vec2_step.build_trainer`) and feeds it batches built the way
`sslax.data.pretraining_stream.PretrainingStream` builds them without buckets or augmentation: each
epoch a seeded permutation of the train split's utterances of at least `min_samples`, a
seeded random crop of longer ones to `max_samples`, zero padding with `audio_paddings`,
span masks from `sslax.data.masking` over each row's unpadded frames. It reads the demo
corpus's Ogg files with soundfile (carry its wheels; see benchmarks/gpu_check.sh).

Every `--save_every` steps and at the end it writes DIR/params/ (an sslax checkpoint:
config.json + params.safetensors, which `--config.init_from=DIR/params` reads) and
appends the interval's mean loss and contrastive accuracy to DIR/log.jsonl. It does not
resume: it is a measurement, not a job.
"""

import json
import os
import sys
import time

# Config files import `configs.common`: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  (after the sys.path line)
import jax
from ml_collections import config_flags
import numpy as np
import soundfile

from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.data import masking
from sslax.registry import checkpoint
from sslax.train import metrics, wav2vec2_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_OUT = flags.DEFINE_string("out", None, "Where params/ and log.jsonl go.")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 1000, "Steps between checkpoint writes.")
_CORPUS = flags.DEFINE_string(
  "corpus", "sslax/data/demo_corpus", "Folder with {split}.jsonl and audio/{split}/{id}.ogg."
)
_SPLIT = flags.DEFINE_string("split", "train", "Corpus split to pretrain on.")
flags.mark_flags_as_required(["config", "out"])


def load_split(corpus: str, split: str) -> list[np.ndarray]:
  """The split's utterances as f32[num_samples] in [-1, 1), in the jsonl's order."""
  utterances = []
  with open(os.path.join(corpus, f"{split}.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      path = os.path.join(corpus, "audio", split, record["id"] + ".ogg")
      samples, rate = soundfile.read(path, dtype="int16")
      if rate != 16_000 or samples.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {rate} Hz, shape {samples.shape}")
      utterances.append(samples.astype(np.float32) / 32768.0)
  return utterances


class Batches:
  """Global batch `k` as a pure function of (seed, k): audio, audio_paddings and mask."""

  def __init__(self, utterances, data, mask_config, frames_fn, seed: int):
    self._utterances = utterances
    self._usable = np.flatnonzero([u.size >= data.min_samples for u in utterances])
    self._data, self._mask, self._frames_fn, self._seed = data, mask_config, frames_fn, seed

  def _example(self, position: int) -> int:
    epoch, index = divmod(position, len(self._usable))
    order = np.random.default_rng([self._seed, 0, epoch]).permutation(len(self._usable))
    return int(self._usable[order[index]])

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    B, S = self._data.batch_size, self._data.max_samples
    audio = np.zeros((B, S), np.float32)
    paddings = np.ones((B, S), np.float32)
    lengths = np.zeros(B, np.int64)
    for row in range(B):
      position = k * B + row
      samples = self._utterances[self._example(position)]
      if samples.size > S:
        start = np.random.default_rng([self._seed, 1, position]).integers(samples.size - S + 1)
        samples = samples[start : start + S]
      audio[row, : samples.size] = samples
      paddings[row, : samples.size] = 0.0
      lengths[row] = samples.size
    mask = masking.batch_span_masks(
      np.random.default_rng([self._seed, 2, k]),
      self._frames_fn(S),
      np.asarray([self._frames_fn(int(n)) for n in lengths]),
      mask_prob=self._mask.mask_prob,
      mask_length=self._mask.mask_length,
      min_masks=self._mask.min_masks,
    )
    return {"audio": audio, "audio_paddings": paddings, "mask": mask}


def save(out: str, config, state) -> None:
  """Writes out/params atomically (a new folder renamed over the old one)."""
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  tmp, final = os.path.join(out, "params.tmp"), os.path.join(out, "params")
  checkpoint.save_sslax_checkpoint(tmp, config.model, params)
  if os.path.exists(final):
    os.rename(final, os.path.join(out, "params.old"))
  os.rename(tmp, final)
  if os.path.exists(os.path.join(out, "params.old")):
    for name in os.listdir(os.path.join(out, "params.old")):
      os.remove(os.path.join(out, "params.old", name))
    os.rmdir(os.path.join(out, "params.old"))


def _stack(step_metrics: list[dict]) -> dict:
  return jax.tree.map(lambda *values: jax.numpy.stack(values), *step_metrics)


def main(argv):
  del argv
  config, out = _CONFIG.value, _OUT.value
  os.makedirs(out, exist_ok=True)
  start = time.time()
  utterances = load_split(_CORPUS.value, _SPLIT.value)
  batches = Batches(
    utterances, config.data, config.masking, wav2vec2_step.frames_fn(config), config.seed
  )
  print(f"{len(utterances)} utterances loaded in {time.time() - start:.1f} s", flush=True)

  mesh = sharding.make_mesh(config.mesh)
  trainer = wav2vec2_step.build_trainer(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, init_rng)
  pending, interval_start = [], time.time()  # device metrics, read once per interval
  with sharding.activate(mesh), open(os.path.join(out, "log.jsonl"), "a") as log:
    for step in range(1, config.total_steps + 1):
      batch = sharding.global_batch(batches(step - 1), mesh)
      state, step_metrics = trainer.step(state, batch, step_rng)
      pending.append(step_metrics)
      if step % config.log_every == 0 or step == config.total_steps:
        sums = {name: float(np.sum(v)) for name, v in jax.device_get(_stack(pending)).items()}
        summary = metrics.summarize(sums, len(pending), time.time() - interval_start)
        line = {"step": step, "wall_s": round(time.time() - start, 1), **summary}
        log.write(json.dumps(line) + "\n")
        log.flush()
        print(metrics.progress_line(step, config.total_steps, summary), flush=True)
        if not np.isfinite(summary["loss"]):
          raise FloatingPointError(f"non-finite loss at step {step}")
        pending, interval_start = [], time.time()
      if step % _SAVE_EVERY.value == 0 or step == config.total_steps:
        save(out, config, state)


if __name__ == "__main__":
  app.run(main)
