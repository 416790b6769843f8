"""Says once, in the log, when pretraining is stuck: contrastive loss at chance, or a
collapsed codebook, after `config.diagnose.after_steps` updates.

These are the two failures users of wav2vec 2.0 ask about most: a loss that stays at
ln(K + 1) nats per masked frame (fairseq reports it in bits: 6.658 for K = 100), and a
quantizer whose code perplexity falls to a few codewords (the loss then drops towards zero
because every frame has the same target). The plateau is judged on the loss, not on the
accuracy: with a small codebook, or few masked frames per row, distractors repeat and share
the positive's codes, so accuracy at chance is well above 1 / (K + 1) (0.047 for 2 x 8
codewords and 2 s crops). The remedies named are those measured on the demo corpus
(benchmarks/RESULTS.md, "Demo pretraining that leaves the plateau").
"""

import math

from absl import logging
import ml_collections

# A contrastive loss within this many nats of ln(K + 1) is "at chance".
_PLATEAU_MARGIN = 0.1

PLATEAU_REMEDIES = (
  "a codebook sized for the data (config.model.latent_vars: 2 x 320 codewords is for "
  "hundreds of hours; on 40 minutes 2 x 8 left the plateau where 2 x 320 never did); a "
  "model sized for the data (0.1M parameters learned where 3.8M stalled); no dropout on "
  "small data (config.model.dropout, attention_dropout, dropout_input, dropout_features, "
  "layerdrop); a short warmup with a larger learning rate for a small model; and "
  "config.objective.feature_penalty_weight=0, which removes the first, flat phase in "
  "which the penalty shrinks the feature encoder's output (a little lower accuracy later)"
)
COLLAPSE_REMEDIES = (
  "a larger diversity weight (config.objective.diversity_weight), a slower Gumbel "
  "temperature decay (config.gumbel.decay) or a smaller learning rate (fairseq's Base "
  "settings; not measured here, no demo run collapsed)"
)


class Diagnosis:
  """Checks each reported summary (`metrics.summarize`'s) of a contrastive run."""

  @classmethod
  def for_config(cls, config: ml_collections.ConfigDict) -> "Diagnosis | None":
    """A diagnosis for wav2vec 2.0 pretraining; None for other jobs and objectives."""
    if config.job != "pretrain" or config.objective.name != "wav2vec2":
      return None
    return cls(config)

  def __init__(self, config: ml_collections.ConfigDict):
    self._after = config.diagnose.after_steps
    self._collapse_share = config.diagnose.collapse_share
    self._chance_loss = math.log(config.objective.num_negatives + 1)
    self._codewords = config.model.latent_vars * config.model.latent_groups
    self._said: set[str] = set()

  def check(self, step: int, summary: dict[str, float]) -> None:
    """Logs a warning (once per kind) when `summary`, reported at `step`, shows a plateau
    or a collapse."""
    if not self._after or step < self._after:
      return
    loss = summary.get("contrastive_loss")
    if loss is not None and loss > self._chance_loss - _PLATEAU_MARGIN:
      self._say(
        "plateau",
        f"after {step} updates the contrastive loss is {loss:.3f} nats per masked frame, "
        f"chance is ln(K + 1) = {self._chance_loss:.3f} (accuracy "
        f"{summary.get('accuracy', math.nan):.3f}): the model has not left the initial "
        f"plateau. What moved the demo off it: {PLATEAU_REMEDIES}",
      )
    codes = summary.get("code_perplexity")
    if codes is not None and codes < self._collapse_share * self._codewords:
      self._say(
        "collapse",
        f"after {step} updates the code perplexity is {codes:.1f} of {self._codewords} "
        f"codewords: the codebook has collapsed. Try {COLLAPSE_REMEDIES}",
      )

  def _say(self, kind: str, message: str) -> None:
    if kind not in self._said:
      self._said.add(kind)
      logging.warning("%s", message)
