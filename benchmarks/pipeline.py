"""Input-stream benchmark on the demo corpus: padding waste with and without buckets, and
batches (and seconds of audio) per second delivered by `PretrainingStream.batches`.

  python benchmarks/pipeline.py --data_dir=/tmp/tfds --batches=60

Padding waste is 1 − (unpadded samples) / (batch rows × padded length) over one epoch's
batches, read from the length index (no audio is decoded for it). Both settings pad to at
most 160,080 samples (10 s, every demo utterance whole); the bucketed one uses
`--buckets` with `bucket_batch_multiple=2`.
"""

import itertools
import os
import time

from absl import app, flags

from configs import common
from sslax.data import pipeline
from sslax.models import frontends

_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' = the TFDS default).")
_BATCHES = flags.DEFINE_integer("batches", 60, "Batches timed per setting (after one warm-up).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch (of the largest bucket).")
_BUCKETS = flags.DEFINE_list("buckets", ["48080", "96080", "160080"], "Bucket lengths.")


def make_stream(buckets: tuple[int, ...], augment: bool) -> pipeline.PretrainingStream:
  data = common.pretrain_config().data
  data.update(
    dict(
      data_dir=_DATA_DIR.value,
      batch_size=_BATCH_SIZE.value,
      max_samples=160_080,
      min_samples=16_000,
      buckets=buckets,
      bucket_batch_multiple=2,
    )
  )
  if augment:
    data.augment.update(dict(speed_prob=0.5, gain_prob=0.5, noise_prob=0.5))
  return pipeline.PretrainingStream(
    data,
    common.pretrain_config().masking,
    lambda n: int(frontends.num_frames(n, common.WAV2VEC2_CONV_LAYERS)),
    seed=0,
    process_index=0,
    process_count=1,
  )


def padding_waste(stream: pipeline.PretrainingStream, num_batches: int) -> float:
  """Share (%) of padded samples over the first `num_batches` global batches."""
  valid = padded = 0
  for k in range(num_batches):
    lengths = stream.row_lengths(k)
    valid += int(lengths.sum())
    padded += lengths.size * stream.batch_rows(k).num_samples
  return 100.0 * (1 - valid / padded)


def throughput(stream: pipeline.PretrainingStream, num_batches: int) -> tuple[float, float]:
  """(batches per second, seconds of audio per second) of the stream, after one batch."""
  batches = stream.batches()
  next(batches)
  start, audio = time.perf_counter(), 0.0
  for batch, _ in itertools.islice(batches, num_batches):
    audio += float((1 - batch["audio_paddings"]).sum()) / pipeline.SAMPLE_RATE
  seconds = time.perf_counter() - start
  return num_batches / seconds, audio / seconds


def main(argv):
  del argv
  buckets = tuple(int(n) for n in _BUCKETS.value)
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
  for name, lengths, augment in (
    ("no buckets", (), False),
    (f"buckets {buckets}", buckets, False),
    (f"buckets {buckets} + augmentation (p=0.5 each)", buckets, True),
  ):
    stream = make_stream(lengths, augment)
    epoch = (
      len(stream.epoch_batches(0)) if lengths else -(-len(stream._usable) // _BATCH_SIZE.value)
    )
    waste = padding_waste(stream, epoch)
    per_second, audio_per_second = throughput(stream, _BATCHES.value)
    print(
      f"{name}: {epoch} batches per epoch, padding {waste:.1f} %, "
      f"{per_second:.1f} batches/s, {audio_per_second:.0f} s of audio/s"
    )
  print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
