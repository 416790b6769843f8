"""CTC fine-tuning on short clips (0.3-2 s: commands, keywords, short prompts).

Command (a dataset of your clips from `python -m sslax.data.manifest`, split `train`):
  python -m sslax.main --config=configs/ctc_short.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.name=my_clips \
    --config.data.data_dir=/data/tfds

configs/ctc_base_10h.py (fairseq base_10h.yaml), whose fields assume LibriSpeech's 2-35 s
utterances, with these fields fitted to clips of at most 2 s (`short_clips`):
  data.max_samples 560_080 -> 32_080 samples (100 frames of 20 ms, 2 s): every batch is
    padded to it, so 35 s would pad each clip about 20 times over; longer clips are dropped
    (raise it by 320 samples per frame for longer ones).
  data.max_label_length 640 -> 64 characters: labels are padded to it (a clip with more is
    dropped); 64 holds about 4 s of read speech (about 15 characters a second), and stays
    below the 100 frames of a 2 s clip, which CTC needs at least one of per character.
  masking.mask_length 10 -> 4 frames (80 ms): min_masks 2 spans of 10 cover 20 frames, all
    of a 0.3 s clip's 15; spans of 4 stay under a third of it. mask_prob (0.65) is kept:
    the expected masked share does not depend on the span length.
and, for a corpus of one's own: the whole split (data.labelled_minutes 600 -> 0),
data.name unset ('': set --config.data.name), data.split 'train', eval.split 'test'.
`python -m sslax.main` warns at start-up, with the numbers, when the masks still do not fit
the clips (`sslax.data.masking.fit_warning`).

`--config=configs/ctc_short.py:demo` applies them to configs/demo_ctc.py (the demo model,
so `init_from` takes a configs/demo.py workdir: the README's "Fine-tune on your own
recordings"), `:tiny` to configs/demo_ctc.py:tiny, for tests: a step takes milliseconds.
"""

import ml_collections

from configs import ctc_base_10h, demo_ctc


def short_clips(c: ml_collections.ConfigDict) -> None:
  """Fits a fine-tuning config's crop, label and mask lengths to clips of 0.3-2 s."""
  c.data.max_samples = 32_080  # 100 frames, 2 s: batches are padded to this
  c.data.max_label_length = 64  # characters; below a 2 s clip's 100 frames
  c.masking.mask_length = 4  # frames: two spans stay within a 0.3 s clip's 15


def get_config(arg=None):
  if arg not in (None, "demo", "tiny"):
    raise ValueError(f"configs/ctc_short.py takes no argument, 'demo' or 'tiny', got {arg!r}")
  if arg is None:
    c = ctc_base_10h.get_config()
  else:
    c = demo_ctc.get_config("tiny" if arg == "tiny" else None)
  c.unlock()
  short_clips(c)
  c.data.labelled_minutes = 0.0  # the whole split
  c.data.name = ""  # the user's dataset
  c.data.split = "train"
  c.eval.split = "test"
  c.lock()
  return c
