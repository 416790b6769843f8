"""HuBERT's pretraining stream: the pretraining batches with each row's k-means units.

`HubertStream` is `pretraining_stream.PretrainingStream` (the same rows, crops, masks and state, so
it resumes exactly as wav2vec 2.0's) whose host batches also hold

  labels i32[b, L]: the units under each row's crop, L = round(S · label_rate / 16 kHz)
    (`unit_labels.num_labels` of the batch's crop length S), IGNORE_LABEL (-1) past the
    utterance's last unit.

The train step maps them to the model's frames with `objectives.hubert.frame_labels`
(frame f takes unit floor(f · label_rate / frame_rate)). Each row's units are found by
its example's key (the units manifest's `key_feature`, read from the example) in
`sslax.data.unit_labels.UnitLabels` and cut where the row's audio was cropped
(`PretrainingStream.host_audio` says which example each row holds and where its crop
starts), as fairseq's HubertDataset crops labels with the audio.

Speed perturbation is refused: it would stretch the audio under fixed units.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

from sslax.data import pretraining_stream
from sslax.data import unit_labels as labels_lib


class HubertStream(pretraining_stream.PretrainingStream):
  """`PretrainingStream` batches plus `labels` (module docstring)."""

  def __init__(
    self,
    data: ml_collections.ConfigDict,
    mask_config: ml_collections.ConfigDict,
    frames_fn: Callable[[int], int],
    unit_labels: labels_lib.UnitLabels,
    *,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if data.augment.speed_prob > 0:
      raise ValueError(
        f"config.data.augment.speed_prob={data.augment.speed_prob}: HuBERT's units are "
        "fixed per utterance, so speed perturbation would misalign them; set it to 0"
      )
    super().__init__(
      data,
      mask_config,
      frames_fn,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )
    self._units = unit_labels
    for split in self._splits:
      if unit_labels.key_feature not in split.source.features:
        raise ValueError(
          f"{split.name}:{split.split} has no feature {unit_labels.key_feature!r}, the key "
          "feature of the units manifest"
        )

  def _like(self, data: ml_collections.ConfigDict) -> "HubertStream":
    """A HuBERT stream over `data` with the same units (they must cover its examples)."""
    return HubertStream(data, unit_labels=self._units, **self._arguments)

  def example_key(self, example: int) -> str:
    """The key of stream example `example` (the units manifest's key feature)."""
    split, index = self._locate(example)
    key = split.source.get(index, self._units.key_feature)
    return key.decode() if isinstance(key, bytes) else str(key)

  def host_batch(self, batch: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `batch`: the parent's arrays plus `labels`, the
    units of the example each row holds (a substitute's for a row whose example could not
    be read) under its crop."""
    audio, paddings, held, starts = self.host_audio(batch)
    length = labels_lib.num_labels(
      self.schedule.batch_rows(batch).num_samples, self._units.label_rate
    )
    labels = np.zeros((len(held), length), np.int32)
    for row, (example, start) in enumerate(zip(held, starts, strict=True)):
      key, num_samples = self.example_key(int(example)), int(self._lengths[example])
      labels[row] = self._units.window(key, num_samples, int(start), length)
    mask = self.schedule.masks(batch)[self.schedule.host_rows(batch)]
    return {"audio": audio, "audio_paddings": paddings, "mask": mask, "labels": labels}
