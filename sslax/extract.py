"""Per-layer hidden states of a wav2vec 2.0 (Transformer or conformer) or HuBERT checkpoint.

Command (from the repository root):
  python -m sslax.extract --checkpoint=PATH --audio=FILE_OR_DIR --layers=all --out=FEATS.npz

PATH is an sslax checkpoint directory (layout in sslax/registry/checkpoint.py), a training
workdir (`sslax.main --workdir`: its latest checkpoint) or `hf:HF_DIR`, a transformers
wav2vec 2.0, wav2vec 2.0 conformer or HuBERT checkpoint imported on the fly
(sslax/interop/hf.py); the checkpoint's model type picks the model, and a batch-norm
conformer runs with its checkpoint's running statistics. --audio is one 16 kHz mono file
or a directory searched recursively for .wav, .flac and .ogg files; the samples are fed as
decoded (apply the normalisation the checkpoint was trained with first). `--resample`
converts audio at other rates or with several channels to 16 kHz mono as the manifest
builder does (channels averaged, soxr_hq); without it such a file is refused.

Every file is read before the checkpoint is loaded. A single --audio file that cannot be
used ends the run with one line naming it and why. In a directory, such files are skipped,
each named in a warning, and counted in the last line; the run fails (exit status 1, one
line) only when no file is left to extract.

FEATS.npz holds one f32[frames, embed_dim] array per utterance and layer, keyed
'NAME/layer_I': NAME is the file's path under --audio without its extension (the file's
stem for a single file); layer I as transformers' `output_hidden_states`, 0 the input to
the first Transformer layer and num_layers the encoder output (after the final LayerNorm in
pre-LN models). --layers is 'all' or comma-separated indices.

Utterances run --batch_size at a time, right-padded to a multiple of --pad_multiple samples
so that few shapes compile; padding does not change the results (sslax's group norm,
attention and conformer convolution skip padded frames), so each utterance gets what it
would get alone.
"""

import os

from absl import app, flags, logging
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import soundfile

from sslax.core import chatter
from sslax.data import decode
from sslax.interop import hf
from sslax.models import backbone
from sslax.registry import checkpoint, model_types

SAMPLE_RATE_HZ = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
HF_PREFIX = "hf:"

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "sslax checkpoint dir or hf:HF_DIR.")
_AUDIO = flags.DEFINE_string("audio", None, "16 kHz audio file, or a directory of them.")
_LAYERS = flags.DEFINE_string("layers", "all", "'all' or comma-separated layer indices.")
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.")
_PAD_MULTIPLE = flags.DEFINE_integer("pad_multiple", SAMPLE_RATE_HZ, "Pad lengths to this.")
_RESAMPLE = flags.DEFINE_bool(
  "resample", False, "Convert audio at other rates or with several channels to 16 kHz mono."
)


class AudioError(ValueError):
  """A file that cannot be fed to the model; the message names it and says why."""


def load(path: str) -> checkpoint.Checkpoint:
  """An sslax checkpoint directory, a training workdir (the `config.model` of its
  config.json and its latest checkpoint) or `hf:HF_DIR`, with its model state.

  Raises:
    ValueError: the variables do not have the shapes the model fields imply.
  """
  if path.startswith(HF_PREFIX):
    loaded, _ = hf.read_hf(path.removeprefix(HF_PREFIX))
    return loaded
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return checkpoint.read_workdir(path)
  return checkpoint.read_sslax_checkpoint(path)


def load_model(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(model_config, params) of `load(path)`: for models without model state (`extract`
  names what a batch-norm conformer lacks without it)."""
  loaded = load(path)
  return loaded.model_config, loaded.params


def parse_layers(spec: str, num_layers: int) -> list[int]:
  """Hidden-state indices from 'all' or '0,6,12'; each in [0, num_layers]."""
  if spec == "all":
    return list(range(num_layers + 1))
  layers = [int(i) for i in spec.split(",")]
  bad = [i for i in layers if not 0 <= i <= num_layers]
  if bad:
    raise ValueError(f"--layers {bad} outside 0..{num_layers} (the model has {num_layers})")
  return layers


def list_audio(path: str) -> list[tuple[str, str]]:
  """(name, file) for `path` itself or each audio file under it, sorted by name."""
  if os.path.isfile(path):
    return [(os.path.splitext(os.path.basename(path))[0], path)]
  found = []
  for root, _, files in os.walk(path):
    for file in files:
      if file.lower().endswith(AUDIO_EXTENSIONS):
        full = os.path.join(root, file)
        found.append((os.path.splitext(os.path.relpath(full, path))[0], full))
  if not found:
    raise FileNotFoundError(f"no {'/'.join(AUDIO_EXTENSIONS)} files under {path}")
  return sorted(found)


def read_audio(path: str, resample: bool = False) -> np.ndarray:
  """f32[S] samples of a 16 kHz mono file, or of any file converted to 16 kHz mono when
  `resample` (channels averaged, then `decode.to_16k`).

  Raises:
    AudioError: the file does not decode, holds no samples, or is not 16 kHz mono and not
      `resample`.
  """
  try:
    samples_SxC, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except Exception as error:  # soundfile raises several types for bad files
    raise AudioError(f"{path}: cannot decode audio ({error})") from None
  if samples_SxC.shape[0] == 0:
    raise AudioError(f"{path}: no samples")
  channels = samples_SxC.shape[1]
  if (rate != SAMPLE_RATE_HZ or channels != 1) and not resample:
    raise AudioError(
      f"{path}: {rate} Hz, {channels} channel(s); sslax models need {SAMPLE_RATE_HZ} Hz mono "
      "(--resample converts it)"
    )
  return decode.to_16k(samples_SxC.mean(axis=1), rate)


def read_all(named: list[tuple[str, str]], resample: bool) -> tuple[list, list[str]]:
  """([(name, f32[S] samples)] of the usable files, ['FILE: reason'] of the others), each
  unusable file named in a warning as it is met."""
  usable, refused = [], []
  for name, file in named:
    try:
      usable.append((name, read_audio(file, resample)))
    except AudioError as error:
      logging.warning("skipping %s", error)
      refused.append(str(error))
  return usable, refused


def extract(
  model_config: ml_collections.ConfigDict,
  params,
  utterances: list[np.ndarray],
  layers: list[int],
  *,
  batch_size: int,
  pad_multiple: int,
  model_state: dict | None = None,
) -> list[dict[int, np.ndarray]]:
  """Hidden states of each utterance alone.

  Args:
    model_config: `config.model` fields of a wav2vec 2.0 or HuBERT model.
    params: the model's params tree (`model_types.build_model(model_config)`).
    utterances: f32[S_u] waveforms (16 kHz).
    layers: hidden-state indices to keep (0..num_layers).
    batch_size: utterances per forward pass (the last batch is padded with empty ones).
    pad_multiple: batches are right-padded to a multiple of this many samples.
    model_state: the model's other variable collections (a batch-norm conformer's
      running statistics, `checkpoint.Checkpoint.model_state`); None when it has none.

  Returns:
    Per utterance, {layer: f32[frames_u, embed_dim]}, frames_u = num_frames(S_u).

  Raises:
    ValueError: a model without hidden-state outputs (CTC), or model state missing.
  """
  kind = model_types.model_type(model_config)
  if kind not in ("wav2vec2", "hubert"):
    raise ValueError(
      f"a {kind} checkpoint has no hidden-state outputs; extract reads wav2vec2 and hubert ones"
    )
  model_state = model_state or {}
  given = flax.traverse_util.flatten_dict(model_state, sep="/")
  lacking = sorted(set(model_types.state_shapes(model_config)) - set(given))
  if lacking:
    raise ValueError(f"the model needs its state ({lacking[0]}, ...): pass model_state")
  model = model_types.build_model(model_config)
  eval_kwargs = model_types.eval_kwargs(model_config)

  @jax.jit
  def hidden_states(params, model_state, audio_BxS, paddings_BxS):
    frames = backbone.num_frames(audio_BxS.shape[1], model_config)
    out = model.apply(
      {"params": params, **model_state},
      audio_BxS,
      paddings_BxS,
      jnp.zeros((audio_BxS.shape[0], frames), bool),
      train=False,
      return_hidden_states=True,
      **eval_kwargs,
    )
    return [out.hidden_states[i] for i in layers]

  results = []
  for start in range(0, len(utterances), batch_size):
    batch = utterances[start : start + batch_size]
    longest = max(len(u) for u in batch)
    num_samples = max(-(-longest // pad_multiple), 1) * pad_multiple
    audio_BxS = np.zeros((batch_size, num_samples), np.float32)
    paddings_BxS = np.ones((batch_size, num_samples), np.float32)
    for b, u in enumerate(batch):
      audio_BxS[b, : len(u)] = u
      paddings_BxS[b, : len(u)] = 0.0
    states = [np.asarray(h) for h in hidden_states(params, model_state, audio_BxS, paddings_BxS)]
    for b, u in enumerate(batch):
      frames = backbone.num_frames(len(u), model_config)
      results.append({i: h[b, :frames] for i, h in zip(layers, states, strict=True)})
  return results


def run(
  checkpoint_path: str,
  audio_path: str,
  layers_spec: str,
  out_path: str,
  *,
  batch_size: int,
  pad_multiple: int,
  resample: bool = False,
) -> None:
  """Writes the requested hidden states of every usable utterance under `audio_path` to
  `out_path` (module docstring: what is skipped).

  Raises:
    AudioError: `audio_path` is a file that cannot be used, or a directory none of whose
      files can; raised before the checkpoint is loaded.
  """
  named = list_audio(audio_path)
  if os.path.isfile(audio_path):
    usable, refused = [(named[0][0], read_audio(audio_path, resample))], []
  else:
    usable, refused = read_all(named, resample)
    if not usable:
      raise AudioError(
        f"none of the {len(named)} audio files under {audio_path} can be used (first: {refused[0]})"
      )
  loaded = load(checkpoint_path)
  layers = parse_layers(layers_spec, loaded.model_config.num_layers)
  utterances = [samples for _, samples in usable]
  states = extract(
    loaded.model_config,
    loaded.params,
    utterances,
    layers,
    batch_size=batch_size,
    pad_multiple=pad_multiple,
    model_state=loaded.model_state,
  )
  arrays = {
    f"{name}/layer_{i}": h
    for (name, _), hidden in zip(usable, states, strict=True)
    for i, h in hidden.items()
  }
  # Atomic: a killed run leaves no half-written file under the name asked for.
  tmp = f"{out_path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, out_path)
  skipped = f"; {len(refused)} of {len(named)} files skipped (named above)" if refused else ""
  print(f"wrote {out_path}: {len(usable)} utterances, layers {layers}{skipped}")


def main(argv):
  del argv
  chatter.install()
  try:
    run(
      _CHECKPOINT.value,
      _AUDIO.value,
      _LAYERS.value,
      _OUT.value,
      batch_size=_BATCH_SIZE.value,
      pad_multiple=_PAD_MULTIPLE.value,
      resample=_RESAMPLE.value,
    )
  except (AudioError, FileNotFoundError) as error:
    raise SystemExit(f"sslax.extract: {error}") from None


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "audio", "out"])
  app.run(main)
