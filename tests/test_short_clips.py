"""Short utterances: span masks that cannot fit them are a start-up warning with the numbers,
and configs/ctc_short.py fine-tunes on clips of 0.3-2 s built by the manifest builder."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile

from configs import ctc_short
from sslax import loop
from sslax.core import text
from sslax.data import labelled, manifest, masking
from sslax.train import ctc_step, wav2vec2_step

WORDS = ("YES", "NO", "UP", "DOWN", "LEFT", "RIGHT", "GO", "STOP")


def test_fit_warning_gives_the_numbers_only_when_the_masks_do_not_fit():
  fairseq = dict(mask_prob=0.65, mask_length=10, min_masks=2)
  assert masking.fit_warning(780, 400, **fairseq) is None  # a 15.6 s crop
  assert masking.fit_warning(57, 23, **dict(fairseq, mask_length=4)) is None
  assert masking.fit_warning(15, 7, **dict(fairseq, mask_prob=0.0)) is None  # no time masks

  # The clips of 7-50 frames: two spans of 10 are all of a 14-frame clip.
  assert masking.fit_warning(28, 14, **fairseq) == (
    "config.masking.mask_length=10 frames (mask_prob=0.65, min_masks=2) does not fit these "
    "utterances (median 28 frames, 10th percentile 14): 2 span(s) of 10 frames may cover "
    "100% of a 10th-percentile utterance. Shorten config.masking.mask_length "
    "(configs/ctc_short.py sets the fields for clips of 0.3-2 s) or lower "
    "config.masking.min_masks"
  )
  # Too few spans for the median, alone: 0.1 x 50 / 10 = 0.5, so min_masks=1 sets 20%.
  alone = masking.fit_warning(50, 40, mask_prob=0.1, mask_length=10, min_masks=1)
  assert "(median 50 frames, 10th percentile 40): mask_prob gives the median one 0.50 spans, " in (
    alone
  )
  assert "so min_masks decides (up to 20% of it)." in alone and "span(s)" not in alone
  # min_masks 0 still draws a span where the rounding allows one: it counts as one.
  assert "1 span(s) of 10 frames" in masking.fit_warning(
    40, 16, mask_prob=0.65, mask_length=10, min_masks=0
  )


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
  """A TFDS data_dir with dataset `clips`: 24 clips of 0.3-2 s, one command word each."""
  root = tmp_path_factory.mktemp("clips")
  (root / "audio").mkdir()
  rng = np.random.default_rng(0)
  for i in range(24):
    seconds = 0.3 + 1.7 * i / 23
    samples = 0.1 * rng.normal(size=int(seconds * 16_000))
    soundfile.write(root / "audio" / f"{i:02d}.wav", samples, 16_000)
    (root / "audio" / f"{i:02d}.txt").write_text(WORDS[i % len(WORDS)])
  data_dir = str(root / "tfds")
  manifest.build("clips", {"train": str(root / "audio")}, data_dir)
  return data_dir


def short_config(data_dir, **overrides):
  config = ctc_short.get_config("tiny")
  config.unlock()
  # Batches of 8: one row per device of the tests' 8 (tests/conftest.py).
  config.data.update(name="clips", data_dir=data_dir, batch_size=8)
  config.total_steps = 2
  for field, value in overrides.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


def test_ctc_short_fine_tunes_on_short_clips_without_a_mask_warning(tmp_path, clips_dir, caplog):
  caplog.set_level(logging.INFO)
  workdir = str(tmp_path / "run")
  loop.train(short_config(clips_dir), workdir, ctc_step.finetuning_setup)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line) for line in f]
  assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["loss"]) for m in steps)
  assert "fine-tuning on 24 utterances" in caplog.text
  assert "does not fit these utterances" not in caplog.text


def test_fairseq_masks_on_short_clips_warn_at_start_up(clips_dir, caplog):
  config = short_config(clips_dir, **{"masking.mask_length": 10})
  labelled.FinetuningStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    text.Vocabulary.build(WORDS),
    channels=config.model.embed_dim,
    seed=0,
    process_index=0,
    process_count=1,
  )
  (warning,) = [r.getMessage() for r in caplog.records if "does not fit" in r.getMessage()]
  assert warning.startswith("clips:train: config.masking.mask_length=10 frames (mask_prob=0.65")
  # Clips of 0.3 + 1.7 i / 23 s: the median 1.15 s is (18,400 - 400) / 320 + 1 frames, the
  # 10th percentile 0.47 s (i = 2.3) 23; two spans of 10 may cover 20 of its 23 frames.
  assert "(median 57 frames, 10th percentile 23): 2 span(s) of 10 frames may cover 87%" in warning
