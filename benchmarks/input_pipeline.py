"""Input-stream benchmark on the demo corpus: seconds of audio delivered per second per CPU
core (read + decode + crop + mask + bucket + batch), with and without augmentation, and the
padding waste of length buckets.

  python benchmarks/input_pipeline.py --data_dir=/tmp/tfds --batches=60

Each setting runs `PretrainingStream.batches` (the executor training reads through) for
`--batches` global batches after one warm-up batch, on the demo train split stored two ways:
as TFDS stores it (int16 samples in ArrayRecord, an int64 varint list per example) and as
FLAC bytes (a `lazy_decode` copy the benchmark writes once into `--data_dir`, decoded with
soundfile like `librispeech/lazy_decode`). Three throughputs, in seconds of audio per second:
* per core (CPU time): audio delivered / CPU seconds the process spent (all its threads,
  `time.process_time`). It counts work, not waiting, so it holds on a loaded machine; it
  is conservative by the few batches the executor prepares ahead of the last one counted.
* one pinned core: `host_batch` called in a loop on one thread pinned to one core
  (`os.sched_setaffinity`), wall clock; equals the CPU-time number on an idle machine.
* whole process: audio / wall seconds with `config.data.read_threads` readers.
The load average is printed before and after.

Padding waste is 1 − (unpadded samples) / (batch rows × padded length) over one epoch's
batches, from the length index (no audio is decoded for it).
"""

import io
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  (after the sys.path line)
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs import common  # noqa: E402
from sslax.data import decode, pretraining_stream, splits  # noqa: E402
from sslax.models import frontends  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' = the TFDS default).")
_BATCHES = flags.DEFINE_integer("batches", 60, "Batches timed per setting (after one warm-up).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch (of the largest bucket).")
_BUCKETS = flags.DEFINE_list("buckets", ["48080", "96080", "160080"], "Bucket lengths.")
_CROP = flags.DEFINE_integer("crop", 48_080, "Crop length of the cropped setting (samples).")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this JSON file.")

FLAC_NAME = "sslax_demo_flac"  # the demo train split as FLAC bytes (lazy_decode)


def prepare_flac_copy(data_dir: str) -> None:
  """Writes the demo corpus's train split as FLAC bytes into `data_dir`, once."""
  try:
    tfds.builder(FLAC_NAME, data_dir=data_dir or None)
    return  # prepared (a read-only builder exists only for prepared data)
  except tfds.core.registered.DatasetNotFoundError:
    pass
  source, audio_key = splits.open_split("sslax_demo_corpus", "train", data_dir)

  def examples():
    for i in range(len(source)):
      buffer = io.BytesIO()
      soundfile.write(buffer, np.asarray(source[i][audio_key]), 16_000, format="FLAC")
      buffer.seek(0)
      yield i, {"id": source[i]["id"], "speech": buffer}

  tfds.dataset_builders.store_as_tfds_dataset(
    name=FLAC_NAME,
    version="1.0.0",
    features=tfds.features.FeaturesDict(
      {
        "id": tfds.features.Text(),
        "speech": tfds.features.Audio(
          shape=(None,), dtype=np.int16, sample_rate=16_000, lazy_decode=True
        ),
      }
    ),
    split_datasets={"train": examples()},
    data_dir=data_dir or None,
    file_format="array_record",
    disable_shuffling=True,
  )


def make_stream(
  name: str, max_samples: int, buckets: tuple[int, ...], augment: bool
) -> pretraining_stream.PretrainingStream:
  data = common.pretrain_config().data
  data.update(
    dict(
      name=name,
      data_dir=_DATA_DIR.value,
      batch_size=_BATCH_SIZE.value,
      max_samples=max_samples,
      min_samples=16_000,
      buckets=buckets,
      bucket_batch_multiple=2,
    )
  )
  if augment:
    data.augment.update(dict(speed_prob=0.5, gain_prob=0.5, noise_prob=0.5))
  return pretraining_stream.PretrainingStream(
    data,
    common.pretrain_config().masking,
    lambda n: int(frontends.num_frames(n, common.WAV2VEC2_CONV_LAYERS)),
    seed=0,
    process_index=0,
    process_count=1,
  )


def padding_waste(stream: pretraining_stream.PretrainingStream, num_batches: int) -> float:
  """Share (%) of padded samples over the first `num_batches` global batches."""
  valid = padded = 0
  for k in range(num_batches):
    lengths = stream.schedule.row_lengths(k)
    valid += int(lengths.sum())
    padded += lengths.size * stream.schedule.batch_rows(k).num_samples
  return 100.0 * (1 - valid / padded)


def audio_seconds(batch: dict[str, np.ndarray]) -> float:
  return float((1 - batch["audio_paddings"]).sum()) / decode.SAMPLE_RATE


def stream_throughput(
  stream: pretraining_stream.PretrainingStream, num_batches: int
) -> dict[str, float]:
  """Audio seconds per wall second and per CPU second through `batches()`."""
  with stream.batches() as batches:
    next(batches)
    wall, cpu, audio = time.perf_counter(), time.process_time(), 0.0
    for batch, _ in itertools.islice(batches, num_batches):
      audio += audio_seconds(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {"per_cpu_second": audio / cpu, "per_wall_second": audio / wall}


def pinned_throughput(stream: pretraining_stream.PretrainingStream, num_batches: int) -> float:
  """Audio seconds per wall second of `host_batch` on one thread pinned to one core."""
  cores = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {max(cores)})
  try:
    stream.host_batch(num_batches + 1)  # warm-up, on batches `batches()` did not read
    start, audio = time.perf_counter(), 0.0
    for k in range(num_batches + 2, 2 * num_batches + 2):
      audio += audio_seconds(stream.host_batch(k))
    return audio / (time.perf_counter() - start)
  finally:
    os.sched_setaffinity(0, cores)


def main(argv):
  del argv
  prepare_flac_copy(_DATA_DIR.value)
  buckets = tuple(int(n) for n in _BUCKETS.value)
  print(f"load average before {os.getloadavg()}, {os.cpu_count()} CPUs")
  results = []
  for storage, name in (("int16", "sslax_demo_corpus"), ("FLAC", FLAC_NAME)):
    for setting, max_samples, lengths, augment in (
      ("whole utterances, one shape", buckets[-1], (), False),
      ("whole utterances, buckets", buckets[-1], buckets, False),
      (f"crops of {_CROP.value}", _CROP.value, (), False),
      ("buckets + speed, gain, noise (p=0.5 each)", buckets[-1], buckets, True),
    ):
      stream = make_stream(name, max_samples, lengths, augment)
      epoch = (
        len(stream.schedule.epoch_batches(0))
        if lengths
        else -(-len(stream.schedule.usable) // _BATCH_SIZE.value)
      )
      result = dict(
        storage=storage,
        setting=setting,
        batches_per_epoch=epoch,
        padding_waste_percent=padding_waste(stream, epoch),
        **stream_throughput(stream, _BATCHES.value),
        pinned_core_per_wall_second=pinned_throughput(stream, _BATCHES.value),
      )
      results.append(result)
      print(
        f"{storage:5s} {setting}: {epoch} batches/epoch, padding "
        f"{result['padding_waste_percent']:.1f} %; s of audio per CPU-second "
        f"{result['per_cpu_second']:.0f}, per second on one pinned core "
        f"{result['pinned_core_per_wall_second']:.0f}, per second (whole process) "
        f"{result['per_wall_second']:.0f}",
        flush=True,
      )
  print(f"load average after {os.getloadavg()}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(load_average_after=os.getloadavg(), results=results), f, indent=1)


if __name__ == "__main__":
  app.run(main)
