"""float64 numpy references of fairseq definitions that several test files check against.

Written from fairseq's `fairseq/modules/gumbel_vector_quantizer.py` (perplexities),
`fairseq/models/wav2vec/wav2vec2.py` (which frames are quantized) and
`fairseq/criterions/wav2vec_criterion.py` (how the diversity loss is weighted), with the
per-GPU sums of its data-parallel trainer.
"""

import numpy as np


def softmax(logits):
  """float64 softmax over the last axis."""
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def codebook_perplexity(distributions_NxGxV):
  """GumbelVectorQuantizer: sum over groups of exp(entropy of the N frames' mean), with
  1e-7 inside the log."""
  mean_GxV = np.asarray(distributions_NxGxV, np.float64).mean(0)
  return np.exp(-(mean_GxV * np.log(mean_GxV + 1e-7)).sum(-1)).sum()


def diversity(logits_BxFxGxV, mask_BxF, paddings_BxF, gpu_batches):
  """fairseq's diversity loss over data-parallel GPUs and accumulated microbatches.

  Each entry of `gpu_batches` is the rows one GPU sees in one forward pass (one
  microbatch). As fairseq's Wav2Vec2Model, the GPU gathers its batch's masked frames
  (`unmasked_features[mask_indices]`; fairseq's masks never cover padding, and padded
  frames are dropped here explicitly) and the quantizer takes the perplexities of their
  mean distributions. The criterion multiplies (GV - prob_perplexity) / GV by the GPU's
  sample_size, its masked frames; the trainer sums losses and sample sizes over GPUs and
  microbatches.

  Returns:
    float64[4]: sums over GPU batches of (GV - prob_ppl) / GV · N, prob_ppl · N,
    code_ppl · N, and N.
  """
  logits_BxFxGxV = np.asarray(logits_BxFxGxV, np.float64)
  num_vars = logits_BxFxGxV.shape[-1]
  num_codevectors = logits_BxFxGxV.shape[-2] * num_vars
  paddings_BxF = np.asarray(paddings_BxF)
  totals = np.zeros(4)
  for rows in gpu_batches:
    rows = np.asarray(rows)
    gathered = np.asarray(mask_BxF)[rows] & (paddings_BxF[rows] == 0)
    logits_NxGxV = logits_BxFxGxV[rows][gathered]
    n = len(logits_NxGxV)
    prob_ppl = codebook_perplexity(softmax(logits_NxGxV))
    code_ppl = codebook_perplexity(np.eye(num_vars)[logits_NxGxV.argmax(-1)])
    totals += [(num_codevectors - prob_ppl) / num_codevectors * n, prob_ppl * n, code_ppl * n, n]
  return totals
