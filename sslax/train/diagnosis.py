"""Says once, in the log, when pretraining is stuck: contrastive accuracy at chance, or a
collapsed codebook, after `config.diagnose.after_steps` updates.

These are the two failures users of wav2vec 2.0 ask about most: a loss that stays at
ln(K + 1) (fairseq reports it in bits: 6.658 for K = 100) with accuracy 1 / (K + 1), and
a quantizer whose code perplexity falls to a few codewords (the loss then drops towards
zero because every frame has the same target). The remedies named are those measured on
the demo corpus (benchmarks/RESULTS.md, "Why the demo sat at chance").
"""

from absl import logging
import ml_collections

# A summary's accuracy below this multiple of chance (1 / (K + 1)) is "at chance".
_CHANCE_MULTIPLE = 2.0

PLATEAU_REMEDIES = (
  "masks that keep about half of each row's frames (sslax draws them per row); "
  "a codebook sized for the data (config.model.latent_vars: 320 x 2 codewords is for "
  "hundreds of hours, tens of minutes want about 16 x 2); no dropout on small data "
  "(config.model.dropout, attention_dropout, dropout_input, dropout_features, layerdrop); "
  "a shorter warmup and a larger learning rate for a small model"
)
COLLAPSE_REMEDIES = (
  "a larger diversity weight (config.objective.diversity_weight), a slower Gumbel "
  "temperature decay (config.gumbel.decay) or a smaller learning rate"
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
    self._chance = 1.0 / (config.objective.num_negatives + 1)
    self._codewords = config.model.latent_vars * config.model.latent_groups
    self._said: set[str] = set()

  def check(self, step: int, summary: dict[str, float]) -> None:
    """Logs a warning (once per kind) when `summary`, reported at `step`, shows a plateau
    or a collapse."""
    if not self._after or step < self._after:
      return
    accuracy = summary.get("accuracy")
    if accuracy is not None and accuracy < _CHANCE_MULTIPLE * self._chance:
      self._say(
        "plateau",
        f"after {step} updates contrastive accuracy is {accuracy:.3f}, chance is "
        f"{self._chance:.3f}: the model has not left the initial plateau. What moved the "
        f"demo off it: {PLATEAU_REMEDIES}",
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
