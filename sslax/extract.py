"""Per-layer hidden states of a wav2vec 2.0 (Transformer or conformer) or HuBERT checkpoint.

Command (from the repository root):
  python -m sslax.extract --checkpoint=PATH --audio=FILE_OR_DIR --layers=all --out=FEATS.npz

PATH is an sslax checkpoint directory (layout in sslax/interop/checkpoint.py), a training
workdir (`sslax.main --workdir`: its latest checkpoint) or `hf:HF_DIR`, a transformers
wav2vec 2.0, wav2vec 2.0 conformer or HuBERT checkpoint imported on the fly
(sslax/interop/hf.py); the checkpoint's model type picks the model, and a batch-norm
conformer runs with its checkpoint's running statistics. --audio is one 16 kHz mono file
or a directory searched recursively for .wav, .flac and .ogg files; the samples are fed as
decoded (apply the normalisation the checkpoint was trained with first).

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

from absl import app, flags
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import soundfile

from sslax.interop import checkpoint, hf
from sslax.models import backbone

SAMPLE_RATE_HZ = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
HF_PREFIX = "hf:"

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "sslax checkpoint dir or hf:HF_DIR.")
_AUDIO = flags.DEFINE_string("audio", None, "16 kHz audio file, or a directory of them.")
_LAYERS = flags.DEFINE_string("layers", "all", "'all' or comma-separated layer indices.")
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.")
_PAD_MULTIPLE = flags.DEFINE_integer("pad_multiple", SAMPLE_RATE_HZ, "Pad lengths to this.")


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


def read_audio(path: str) -> np.ndarray:
  """f32[S] samples of a 16 kHz mono file."""
  samples, rate = soundfile.read(path, dtype="float32")
  if rate != SAMPLE_RATE_HZ or samples.ndim != 1:
    raise ValueError(f"{path}: {rate} Hz, {samples.ndim}-D; sslax models need 16 kHz mono")
  return samples


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
    params: the model's params tree (`checkpoint.build_model(model_config)`).
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
  kind = checkpoint.model_type(model_config)
  if kind not in ("wav2vec2", "hubert"):
    raise ValueError(
      f"a {kind} checkpoint has no hidden-state outputs; extract reads wav2vec2 and hubert ones"
    )
  model_state = model_state or {}
  given = flax.traverse_util.flatten_dict(model_state, sep="/")
  lacking = sorted(set(checkpoint.state_shapes(model_config)) - set(given))
  if lacking:
    raise ValueError(f"the model needs its state ({lacking[0]}, ...): pass model_state")
  model = checkpoint.build_model(model_config)
  eval_kwargs = checkpoint.eval_kwargs(model_config)

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
) -> None:
  """Writes the requested hidden states of every utterance under `audio_path` to `out_path`."""
  loaded = load(checkpoint_path)
  layers = parse_layers(layers_spec, loaded.model_config.num_layers)
  named = list_audio(audio_path)
  utterances = [read_audio(file) for _, file in named]
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
    for (name, _), hidden in zip(named, states, strict=True)
    for i, h in hidden.items()
  }
  # Atomic: a killed run leaves no half-written file under the name asked for.
  tmp = f"{out_path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, out_path)
  print(f"wrote {out_path}: {len(named)} utterances, layers {layers}")


def main(argv):
  del argv
  run(
    _CHECKPOINT.value,
    _AUDIO.value,
    _LAYERS.value,
    _OUT.value,
    batch_size=_BATCH_SIZE.value,
    pad_multiple=_PAD_MULTIPLE.value,
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "audio", "out"])
  app.run(main)
