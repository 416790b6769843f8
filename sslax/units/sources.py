"""Frame features the k-means job clusters: Kaldi MFCC or one hidden layer of a checkpoint.

A source is called on a list of f32[S_u] waveforms (16 kHz, samples in [-1, 1]) and returns
one f32[T_u, dim] array per utterance at `frame_rate_hz`; `description` goes into the unit
manifest.
"""

import json

import ml_collections
import numpy as np

from sslax import extract
from sslax.features import mfcc
from sslax.models import backbone

_NORMALIZE_EPS = 1e-5  # as the pretraining pipeline (fairseq's layer norm of the waveform)


class Mfcc:
  """39-dim MFCC + deltas at 100 Hz (HuBERT iteration 1; sslax.features.mfcc)."""

  def __init__(self):
    self.dim = mfcc.FEATURE_DIM
    self.frame_rate_hz = mfcc.FRAME_RATE_HZ
    self.frame_centre_offset = 200  # frame t: Kaldi's 400-sample window from t x 160
    self.description = dict(mfcc.PARAMS)

  def __call__(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    return [mfcc.features(w) for w in waveforms]


class CheckpointLayer:
  """Hidden state `layer` of a wav2vec 2.0 or HuBERT checkpoint, via sslax.extract: an sslax
  checkpoint dir, a training workdir (its latest checkpoint) or hf:DIR, with its model
  state (a batch-norm conformer's running statistics).

  `sslax.extract.extract` compiles its forward pass per call (and per padded length), so
  the job calls it once per shard, not per batch.
  """

  def __init__(self, features: ml_collections.ConfigDict):
    if not features.checkpoint:
      raise ValueError("config.features.checkpoint is empty: give an sslax checkpoint or hf:DIR")
    self._checkpoint = extract.load(features.checkpoint)
    self._model_config = self._checkpoint.model_config
    num_layers = self._model_config.num_layers
    if not 0 <= features.layer <= num_layers:
      raise ValueError(
        f"config.features.layer={features.layer} is outside 0..{num_layers} "
        f"({features.checkpoint} has {num_layers} Transformer layers)"
      )
    self._features = features
    self.dim = self._model_config.embed_dim
    self.frame_rate_hz = backbone.frame_rate_hz(self._model_config)
    # Sample at the centre of frame 0: 200 for the conv stack, 0 for a log-mel frontend.
    self.frame_centre_offset = backbone.frame_centre_offset(self._model_config)
    self.description = dict(
      type="checkpoint",
      checkpoint=features.checkpoint,
      layer=features.layer,
      normalize=features.normalize,
      dim=self.dim,
      frame_rate_hz=self.frame_rate_hz,
      num_layers=num_layers,
    )

  def __call__(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    if self._features.normalize:
      waveforms = [(w - w.mean()) / np.sqrt(w.var() + _NORMALIZE_EPS) for w in waveforms]
    hidden = extract.extract(
      self._model_config,
      self._checkpoint.params,
      waveforms,
      [self._features.layer],
      batch_size=self._features.batch_size,
      pad_multiple=self._features.pad_multiple,
      model_state=self._checkpoint.model_state,
    )
    return [h[self._features.layer].astype(np.float32) for h in hidden]


def from_manifest(description: dict, batch_size: int, pad_multiple: int) -> Mfcc | CheckpointLayer:
  """The source a units manifest's `features` describe, to featurise other audio the same way.

  `batch_size` and `pad_multiple` (checkpoint sources) only batch the forward passes.
  Raises ValueError when the description is not one this code computes.
  """
  if description.get("type") == "mfcc":
    if json.loads(json.dumps(mfcc.PARAMS)) != description:
      raise ValueError(f"the manifest's MFCC settings {description} are not sslax's {mfcc.PARAMS}")
    return Mfcc()
  if description.get("type") == "checkpoint":
    return CheckpointLayer(
      ml_collections.ConfigDict(
        dict(
          source="checkpoint",
          checkpoint=description["checkpoint"],
          layer=description["layer"],
          normalize=description["normalize"],
          batch_size=batch_size,
          pad_multiple=pad_multiple,
        )
      )
    )
  raise ValueError(f"unknown features in a units manifest: {description}")


def make(features: ml_collections.ConfigDict) -> Mfcc | CheckpointLayer:
  """The source `config.features` names."""
  if features.source == "mfcc":
    return Mfcc()
  if features.source == "checkpoint":
    return CheckpointLayer(features)
  raise ValueError(f"config.features.source={features.source!r}; expected 'mfcc' or 'checkpoint'")
