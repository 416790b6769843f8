"""Wav2Vec-Aug style waveform augmentation (Sriram et al. 2022), applied per utterance.

Each transform takes and returns f32[num_samples] 16 kHz audio and draws from a numpy
Generator the caller seeds (the pipeline seeds it by the example's global position, so
augmentation is reproducible and resumes exactly). `augment` chains them, each applied
with its own probability, in the order: speed, gain, additive noise. The speed factor is
the generator's first draws (`speed_factor`), so the augmented length is known without
touching the audio (`augmented_length`): the pipeline draws span masks for a whole batch
from lengths alone. Pretraining configs that match the papers leave every probability at 0.

Noise comes from a bank of noise clips (e.g. MUSAN read through `sslax.data.manifest`)
or, with no bank, is generated: white, pink (1/f power) or brown (1/f^2) noise.
"""

from collections.abc import Sequence
import dataclasses

import librosa
import numpy as np
import scipy.fft

SAMPLE_RATE = 16_000  # Hz
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # exponent of 1/f in the power spectrum


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Probabilities and ranges (the fields of `config.data.augment`).

  Attributes:
    speed_prob: chance of a speed change by a factor drawn from `speed_factors`.
    speed_factors: e.g. (0.9, 1.0, 1.1) as Kaldi's speed perturbation.
    gain_prob: chance of a gain drawn uniformly from `gain_db` = (low, high) dB.
    gain_db: range of the gain.
    noise_prob: chance of additive noise at an SNR drawn uniformly from `snr_db`.
    snr_db: (low, high) signal-to-noise ratio in dB.
    noise_colours: colours generated when there is no noise bank ('white', 'pink',
      'brown').
    noise_dataset: TFDS dataset whose clips form the noise bank (e.g. MUSAN built with
      `sslax.data.manifest`); '' generates coloured noise instead. Read by the pipeline.
    noise_split: its split.
  """

  speed_prob: float = 0.0
  speed_factors: Sequence[float] = (0.9, 1.0, 1.1)
  gain_prob: float = 0.0
  gain_db: tuple[float, float] = (-6.0, 6.0)
  noise_prob: float = 0.0
  snr_db: tuple[float, float] = (5.0, 20.0)
  noise_colours: Sequence[str] = ("white", "pink", "brown")
  noise_dataset: str = ""
  noise_split: str = "train"

  @classmethod
  def from_config(cls, augment_config) -> "AugmentConfig":
    """From `config.data.augment` (a ConfigDict with exactly these fields)."""
    return cls(**{field.name: augment_config[field.name] for field in dataclasses.fields(cls)})

  def __post_init__(self):
    for name in ("speed_prob", "gain_prob", "noise_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"config.data.augment.{name}={getattr(self, name)} is not in [0, 1]")
    unknown = set(self.noise_colours) - set(COLOURS)
    if unknown:
      raise ValueError(
        f"config.data.augment.noise_colours has {sorted(unknown)}; expected {sorted(COLOURS)}"
      )
    if any(f <= 0 for f in self.speed_factors):
      raise ValueError(f"config.data.augment.speed_factors={self.speed_factors} must be > 0")

  @property
  def enabled(self) -> bool:
    return max(self.speed_prob, self.gain_prob, self.noise_prob) > 0


def coloured_noise(rng: np.random.Generator, num_samples: int, colour: str) -> np.ndarray:
  """f32[num_samples] zero-mean, unit-variance noise whose power falls as 1/f^exponent.

  Drawn at scipy's next fast FFT length >= num_samples and cut to num_samples (an FFT of
  an arbitrary length, e.g. a prime, is several times slower), in single precision.
  """
  exponent = COLOURS[colour]
  size = scipy.fft.next_fast_len(max(num_samples, 2), real=True)
  bins = size // 2 + 1
  spectrum = rng.standard_normal(2 * bins, dtype=np.float32).view(np.complex64)
  frequencies = np.fft.rfftfreq(size).astype(np.float32)
  frequencies[0] = frequencies[1]  # no infinite DC gain
  spectrum *= frequencies ** np.float32(-exponent / 2)
  noise = scipy.fft.irfft(spectrum, n=size)[:num_samples]
  noise -= noise.mean()
  return (noise / max(float(noise.std()), 1e-12)).astype(np.float32)


def add_noise(
  audio: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
  """audio + noise scaled to `snr_db` (powers over the utterance); noise is tiled or
  cropped at a random offset to the audio's length."""
  if noise.size < audio.size:
    noise = np.tile(noise, -(-audio.size // noise.size))
  start = int(rng.integers(0, noise.size - audio.size + 1))
  noise = noise[start : start + audio.size]
  signal_power = float(np.mean(np.square(audio)))
  noise_power = max(float(np.mean(np.square(noise))), 1e-12)
  scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
  return (audio + scale * noise).astype(np.float32)


def speed_length(num_samples: int, factor: float) -> int:
  """Samples of `num_samples` played `factor` times faster: round(num_samples / factor)."""
  return int(round(num_samples / factor))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
  """Plays `audio` `factor` times faster (pitch and tempo, as sox `speed`):
  f32[speed_length(n, factor)]."""
  if factor == 1.0:
    return audio
  # Resampling from rate*factor to rate keeps the samples but plays them faster. The rate is
  # rounded to a whole Hz: soxr on a ratio of non-integers (16000 * 0.9 = 14400.000000000002)
  # builds a filter bank for it and runs about 80 times slower.
  out = librosa.resample(
    audio, orig_sr=round(SAMPLE_RATE * factor), target_sr=SAMPLE_RATE, res_type="soxr_hq"
  )
  # soxr's length can differ from round(n / factor) by a sample; the pipeline relies on it.
  out = librosa.util.fix_length(out, size=speed_length(audio.size, factor))
  return out.astype(np.float32)


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
  return (audio * 10 ** (gain_db / 20)).astype(np.float32)


def speed_factor(config: AugmentConfig, rng: np.random.Generator) -> float:
  """The speed factor of one example (1.0 when not changed): the generator's first draws."""
  if rng.random() < config.speed_prob:
    return float(rng.choice(config.speed_factors))
  return 1.0


def augmented_length(num_samples: int, config: AugmentConfig, rng: np.random.Generator) -> int:
  """Samples `augment` returns for `num_samples` given a generator seeded as for `augment`."""
  return speed_length(num_samples, speed_factor(config, rng))


def augment(
  audio: np.ndarray,
  config: AugmentConfig,
  rng: np.random.Generator,
  noise_bank: Sequence[np.ndarray] = (),
) -> np.ndarray:
  """Applies speed, gain and additive noise, each with its probability.

  Args:
    audio: f32[num_samples] 16 kHz waveform (unpadded).
    config: probabilities and ranges.
    rng: the example's generator.
    noise_bank: f32 noise clips to draw from; empty means generated coloured noise.

  Returns:
    f32[num_samples'] augmented audio (a speed change alters the length).
  """
  audio = change_speed(audio, speed_factor(config, rng))
  if rng.random() < config.gain_prob:
    audio = apply_gain(audio, float(rng.uniform(*config.gain_db)))
  if rng.random() < config.noise_prob:
    if noise_bank:
      noise = noise_bank[int(rng.integers(len(noise_bank)))]
    else:
      noise = coloured_noise(rng, audio.size, str(rng.choice(config.noise_colours)))
    audio = add_noise(audio, noise, float(rng.uniform(*config.snr_db)), rng)
  return audio
