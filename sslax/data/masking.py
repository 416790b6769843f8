"""Span masks for wav2vec 2.0 / HuBERT pretraining, computed in the input pipeline (numpy).

Reproduces fairseq's `compute_mask_indices` (fairseq/data/data_utils.py) for the settings
every published wav2vec 2.0 and HuBERT config uses: mask_type 'static', no_overlap False,
mask_other 0, mask_dropout 0. Spans may overlap, so with p=0.65 and length 10 about 49% of
the frames of a long utterance end up masked (wav2vec 2.0 paper, section 4.2), not 65%.

The random draws are made in fairseq's order (`rng.random()` for the span count, then
`rng.choice` for the starts), so one row drawn from `np.random.default_rng(seed)` equals
fairseq's row for that seed.

Each row keeps the masks drawn for its own length: there is no `require_same_masks`.
fairseq equalises the masked counts of a batch (drops frames down to the sparsest row's
count) only because its negative sampler gathers every row's masked frames into one dense
[B, M] tensor; sslax's sampler draws each row's distractors from that row's own masked
frames and needs no equal counts. Equalising would make a row's share depend on the batch
around it: across a padded global batch the shortest row set every row's count (one 2 s
utterance among 384 full 15.6 s crops left each 5.8 % masked instead of 49 %), and even
among rows of one length the share falls with their number (781 frames, p 0.65, length 10:
49.0 % alone, 45.7 % among 8, 42.1 % among 384), so it would change with the global batch
size, the processes and the buckets. Without it a row's masked share is what fairseq's
algorithm gives a row of its length, at any batch layout.
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


def batch_span_masks(
  rng: np.random.Generator,
  num_frames: int,
  valid_frames_B: np.ndarray,
  *,
  mask_prob: float,
  mask_length: int,
  min_masks: int,
) -> np.ndarray:
  """Span masks for a padded batch (fairseq `compute_mask_indices` with a padding mask).

  Args:
    rng: numpy generator.
    num_frames: padded length F (frames).
    valid_frames_B: int[B] unpadded lengths (frames).
    mask_prob, mask_length, min_masks: as in `span_mask`.

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
  return mask_BxF


# Spans that may cover more than this share of a short utterance leave it little context.
MAX_SPAN_SHARE = 0.5


def fit_warning(
  typical_frames: int,
  short_frames: int,
  *,
  mask_prob: float,
  mask_length: int,
  min_masks: int,
) -> str | None:
  """Why span masks cannot fit utterances of these lengths, with the numbers, or None.

  Args:
    typical_frames: the median utterance (or crop) length (frames).
    short_frames: a short one's, the 10th percentile (frames).
    mask_prob, mask_length, min_masks: as in `span_mask`.

  Returns:
    None when the spans that must be drawn (min_masks, at least one) cover at most
    `MAX_SPAN_SHARE` of a short utterance and mask_prob gives the typical one at least one
    span (mask_prob * frames >= mask_length); else one line naming the fields, the lengths,
    which rule fails, the share the spans may cover (upper bound, overlaps ignored), and
    what to change. None when mask_prob is 0 (no time masks).
  """
  if mask_prob <= 0:
    return None

  def covered(frames: int) -> float:
    spans = max(min_masks, mask_prob * frames / mask_length)
    return min(1.0, spans * mask_length / max(frames, 1))

  problems = []
  forced = max(min_masks, 1) * mask_length
  if forced > MAX_SPAN_SHARE * short_frames:
    problems.append(
      f"{max(min_masks, 1)} span(s) of {mask_length} frames may cover "
      f"{covered(short_frames):.0%} of a 10th-percentile utterance"
    )
  if mask_prob * typical_frames < mask_length:
    expected = mask_prob * typical_frames / mask_length
    problems.append(
      f"mask_prob gives the median one {expected:.2f} spans, so min_masks decides "
      f"(up to {covered(typical_frames):.0%} of it)"
    )
  if not problems:
    return None
  return (
    f"config.masking.mask_length={mask_length} frames (mask_prob={mask_prob}, "
    f"min_masks={min_masks}) does not fit these utterances (median {typical_frames} frames, "
    f"10th percentile {short_frames}): {'; '.join(problems)}. Shorten "
    "config.masking.mask_length (configs/ctc_short.py sets the fields for clips of 0.3-2 s) "
    "or lower config.masking.min_masks"
  )
