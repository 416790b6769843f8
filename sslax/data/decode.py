"""Audio decoding: samples of one example's audio feature, stored or encoded, at 16 kHz.

An audio feature's value is either samples as TFDS stores them (an int16 or float array) or
the bytes of an encoded file (TFDS `lazy_decode`, e.g. `librispeech/lazy_decode`'s FLAC),
decoded with soundfile. `header` reads what a value holds without decoding it (the bad-audio
index of `sslax.data.splits`); `decode` returns a slice of its samples, decoding only what
the slice needs where the format's seeks are sample-exact. Faults are raised as `AudioFault`
with a kind from `sslax.data.splits.BAD_AUDIO_KINDS`; the caller names the example.
"""

import io
import math
import re

import librosa
import numpy as np
import soundfile

SAMPLE_RATE = 16_000
_NORMALIZE_EPS = 1e-5  # as fairseq's F.layer_norm over the waveform


class AudioFault(Exception):
  """Audio that cannot be used: `kind` (a `splits.BAD_AUDIO_KINDS` entry) and `reason`."""

  def __init__(self, kind: str, reason: str):
    super().__init__(reason)
    self.kind, self.reason = kind, reason


def _encoded(value) -> bytes | None:
  """The file bytes of audio stored encoded (TFDS `lazy_decode`), or None for samples."""
  if isinstance(value, bytes):
    return value
  if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
    return bytes(value.item())
  return None


def _soundfile_reason(error: Exception) -> str:
  """libsndfile's reason, without the address of the file object its message names."""
  return str(error).rsplit(": ", 1)[-1].strip() or type(error).__name__


# Formats (soundfile's names) whose seeks are sample-exact.
_EXACT_SEEK_FORMATS = ("WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC")
# libsndfile's log line for a WAV data chunk longer than the file ('data : 64000 (should be
# 31978)'). Streaming writers declare 0 or 0xFFFFFFFF bytes; those files are whole.
_WAV_DATA_LINE = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def header(value, feature_rate: int) -> tuple[int, int, int, str, str]:
  """(frames, rate in Hz, channels, kind, reason) of one example's audio, decoding nothing.

  kind and reason are '' for audio that opens whole, else kind is 'unreadable', 'empty' or
  'truncated' (a WAV file shorter than its header says).
  """
  encoded = _encoded(value)
  if encoded is None:
    samples = np.asarray(value)
    channels = 1 if samples.ndim == 1 else int(np.prod(samples.shape[1:]))
    return (samples.shape[0] if samples.ndim else 0), feature_rate, channels, "", ""
  if not encoded:
    return 0, 0, 0, "empty", "empty file (0 bytes)"
  try:
    info = soundfile.info(io.BytesIO(encoded))
  except Exception as error:  # soundfile raises several types for bad files
    return 0, 0, 0, "unreadable", _soundfile_reason(error)
  match = _WAV_DATA_LINE.search(info.extra_info)
  if match and int(match[2]) < int(match[1]) < 0xFFFFFFFF:
    reason = f"the WAV header declares {match[1]} bytes of samples, the file holds {match[2]}"
    return info.frames, info.samplerate, info.channels, "truncated", reason
  return info.frames, info.samplerate, info.channels, "", ""


def to_16k(samples_S: np.ndarray, rate: int) -> np.ndarray:
  """f32[S'] of f32[S] mono samples at `rate` Hz resampled to 16 kHz (librosa's soxr_hq;
  S' = `resampled_length(S, rate)`), or the samples as they are at 16 kHz."""
  if rate == SAMPLE_RATE:
    return samples_S
  return librosa.resample(samples_S, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")


def resampled_length(num_samples: int, rate: int) -> int:
  """Samples of `num_samples` at `rate` Hz resampled to 16 kHz (librosa's ceil(n · ratio))."""
  return int(math.ceil(num_samples * (SAMPLE_RATE / rate)))


def decode(value, start: int, stop: int | None, resample: bool) -> np.ndarray:
  """f32[stop - start] samples start … stop − 1 (16 kHz) of an audio feature's value."""
  encoded = _encoded(value)
  if encoded is None:
    samples = np.asarray(value)
    if samples.ndim != 1 and samples.size != samples.shape[0]:
      raise AudioFault("not_mono", f"samples of shape {samples.shape}, not mono")
    samples = samples.reshape(-1)
    if not samples.size:
      raise AudioFault("empty", "no samples")
    samples = samples[start:stop]
    if np.issubdtype(samples.dtype, np.integer):
      return samples.astype(np.float32) / np.float32(32768.0)
    return samples.astype(np.float32)
  if not encoded:
    raise AudioFault("empty", "empty file (0 bytes)")
  try:
    with soundfile.SoundFile(io.BytesIO(encoded)) as f:
      rate, frames = f.samplerate, f.frames
      if f.channels != 1:
        raise AudioFault("not_mono", f"{f.channels} channels")
      if frames == 0:
        raise AudioFault("empty", "no samples")
      if rate != SAMPLE_RATE and not resample:
        raise AudioFault(
          "wrong_sample_rate",
          f"{rate} Hz, not {SAMPLE_RATE} Hz (config.data.resample=True resamples it)",
        )
      if rate == SAMPLE_RATE:
        stop = frames if stop is None else stop
        # Seeking is sample-exact in PCM and FLAC; a lossy codec (Ogg Vorbis, MP3) decodes
        # differently after a seek, so it is decoded from the start.
        skip = start if f.format in _EXACT_SEEK_FORMATS else 0
        if skip:
          f.seek(skip)
        samples = f.read(stop - skip, dtype="float32")[start - skip :]
        if samples.shape[0] != stop - start:
          raise AudioFault(
            "truncated",
            f"decoded {start + samples.shape[0]} of the {frames} samples its header declares",
          )
        return samples
      samples = f.read(dtype="float32")
  except AudioFault:
    raise
  except Exception as error:  # soundfile raises several types for bad files
    raise AudioFault("unreadable", _soundfile_reason(error)) from error
  if samples.shape[0] != frames:
    raise AudioFault(
      "truncated", f"decoded {samples.shape[0]} of the {frames} samples its header declares"
    )
  return to_16k(samples, rate)[start:stop]


def normalize_audio(samples: np.ndarray) -> np.ndarray:
  """Zero mean, unit variance over the utterance (fairseq task.normalize)."""
  return (samples - samples.mean()) / np.sqrt(samples.var() + _NORMALIZE_EPS)
