"""Span masks for wav2vec 2.0 / HuBERT pretraining, computed in the input pipeline (numpy).

Reproduces fairseq's `compute_mask_indices` (fairseq/data/data_utils.py) for the settings
every published wav2vec 2.0 and HuBERT config uses: mask_type 'static', no_overlap False,
mask_other 0, mask_dropout 0. Spans may overlap, so with p=0.65 and length 10 about 49% of
the frames of a long utterance end up masked (wav2vec 2.0 paper, section 4.2), not 65%.

The random draws are made in fairseq's order (`rng.random()` for the span count, then
`rng.choice` for the starts), so one row drawn from `np.random.default_rng(seed)` equals
fairseq's row for that seed.
"""

import numpy as np


def span_mask(
  rng: np.random.Generator,
  num_frames: int,
  valid_frames: int,
  *,
  mask_prob: float,
  mask_length: int,
  min_masks: int,
) -> np.ndarray:
  """Draws the masked spans of one utterance.

  Args:
    rng: numpy generator; two draws are taken from it (span count, span starts).
    num_frames: padded length F (frames).
    valid_frames: unpadded length (frames), 0 <= valid_frames <= num_frames. Frames at
      or beyond it are padding and are never masked.
    mask_prob: probability of a frame starting a span; the expected number of spans is
      mask_prob * valid_frames / mask_length, rounded stochastically.
    mask_length: span length (frames), >= 1.
    min_masks: at least this many spans are drawn.

  Returns:
    bool[num_frames], True where the frame is masked. Spans are clipped to the valid
    frames. A very short utterance (valid_frames - mask_length <= span count) can come
    out fully masked; fairseq raises there, we return the mask (such utterances are
    dropped by `data.min_samples` long before this matters).
  """
  if mask_length < 1:
    raise ValueError(f"mask_length must be >= 1, got {mask_length}")
  if not 0 <= valid_frames <= num_frames:
    raise ValueError(f"valid_frames={valid_frames} outside [0, num_frames={num_frames}]")
  mask_F = np.zeros(num_frames, dtype=bool)
  # The uniform draw is added before truncation: probabilistic rounding, so the expected
  # span count is exactly mask_prob * valid_frames / mask_length.
  num_spans = max(min_masks, int(mask_prob * valid_frames / mask_length + rng.random()))
  if num_spans == 0:
    # Only possible with min_masks 0 on a short utterance (fairseq raises).
    return mask_F
  # Starts are distinct and leave room for a whole span. When the utterance is too short
  # to offer num_spans such starts, fairseq widens the range to num_spans + 1 candidates;
  # spans starting near or past the end are then clipped (possibly to nothing).
  num_starts = valid_frames - mask_length
  if num_starts <= num_spans:
    num_starts = num_spans + 1
  starts_S = rng.choice(num_starts, num_spans, replace=False)
  frames_SxL = starts_S[:, None] + np.arange(mask_length)[None, :]
  frames = frames_SxL[frames_SxL < valid_frames]
  mask_F[frames] = True
  return mask_F


def equalize_mask_counts(rng: np.random.Generator, mask_BxF: np.ndarray) -> np.ndarray:
  """Unmasks random frames so every row keeps as many masked frames as the sparsest row.

  fairseq's `require_same_masks`: its negative sampler gathers masked frames into a dense
  [B, M, D] tensor, which needs the same M per row. Our sampler does not, but keeping the
  behaviour keeps the share of masked frames (and so the loss) comparable to fairseq.

  Args:
    rng: numpy generator; one `choice` per row that has more than the minimum.
    mask_BxF: bool[B, F] masks.

  Returns:
    bool[B, F]: a subset of `mask_BxF` (frames are only dropped) with equal row counts.
  """
  counts_B = mask_BxF.sum(axis=1)
  target = int(counts_B.min()) if len(counts_B) else 0
  out_BxF = mask_BxF.copy()
  for row, count in enumerate(counts_B):
    if count > target:
      kept = rng.choice(np.flatnonzero(mask_BxF[row]), target, replace=False)
      out_BxF[row] = False
      out_BxF[row, kept] = True
  return out_BxF


def batch_span_masks(
  rng: np.random.Generator,
  num_frames: int,
  valid_frames_B: np.ndarray,
  *,
  mask_prob: float,
  mask_length: int,
  min_masks: int,
  require_same_masks: bool,
) -> np.ndarray:
  """Span masks for a padded batch (fairseq `compute_mask_indices` with a padding mask).

  Args:
    rng: numpy generator.
    num_frames: padded length F (frames).
    valid_frames_B: int[B] unpadded lengths (frames).
    mask_prob, mask_length, min_masks: as in `span_mask`.
    require_same_masks: equalise the masked-frame counts of the rows
      (`equalize_mask_counts`).

  Returns:
    bool[B, num_frames], True where masked; padding frames are never masked.
  """
  mask_BxF = np.zeros((len(valid_frames_B), num_frames), dtype=bool)
  for row, valid_frames in enumerate(valid_frames_B):
    mask_BxF[row] = span_mask(
      rng,
      num_frames,
      int(valid_frames),
      mask_prob=mask_prob,
      mask_length=mask_length,
      min_masks=min_masks,
    )
  if require_same_masks:
    mask_BxF = equalize_mask_counts(rng, mask_BxF)
  return mask_BxF
