"""Layer-wise analysis: what each layer of a pretrained model encodes (Pasad et al.).

Command (from the repository root):
  python -m sslax.analysis.layers --checkpoint=PATH --data=sslax_demo_corpus --split=dev \\
    --out=DIR

PATH is what `sslax.extract` takes: a training workdir (its latest checkpoint), an sslax
checkpoint directory or `hf:HF_DIR`. The split's examples need `phonemes` and `words`
features of [label, start, end] spans in samples (the demo corpus's alignments).

For the frontend's output and every hidden state (0: the input to the first Transformer
or conformer layer, i: layer i's output, as `sslax.extract`), it measures:
- acoustic: PWCCA (sslax/analysis/cca.py) of the frames with the log-mel (or MFCC)
  features of the same frames (Pasad et al.'s CCA-mel);
- phonetic: PWCCA of phone segments, each the mean of its frames, with one-hot phone
  labels (Pasad et al. 2023's CCA-phone);
- lexical: PWCCA of word segments, each the mean of its frames, with one-hot word
  identity over the words that occur at least --min_word_count times (CCA-word);
- probe: the frame phone accuracy of a linear probe (ridge regression to one-hot phones,
  closed form), with the majority phone's share as chance;
- previous: PWCCA of the frames with the previous layer's (Pasad et al.'s CCA-intra
  between neighbours; near 1 where a layer is almost a linear map of its input, so that
  linear read-outs cannot change much across it), in the table and JSON, not the plot.
Everything is fitted on a seeded half of the utterances and scored on the other half
(Pasad et al. fit CCA on 80 % of the items and report the rest), so a layer scores what
generalises to unseen utterances, not what a high-dimensional fit can memorise.

"frontend" is the frontend's own output (the conv feature encoder's, Pasad et al.'s
"local features", or the log-mel frontend's subsampling convolutions'), before the
feature LayerNorm and projection; hidden state 0 is after them (and, in the Transformer,
after the convolutional positional embedding, which already mixes 2.5 s of context in
fairseq's Base).

Frames and labels: frame t of a model is centred on sample t * hop + offset
(`backbone.frame_rate_hz`, `backbone.frame_centre_offset`: 200 for the conv stack's 400
sample receptive field, 0 for the log-mel frontend's centred frames) and takes the span
under that sample (`sslax.units.quality.frame_spans`); frames under no phone (silence)
are left out of the phonetic views and the probe. Each frame's acoustic features are the
10 ms log-mel (librosa, 80 bins, 25 ms windows, centred) or MFCC (13, sslax/features/
mfcc.py) frame whose centre is nearest.

Writes DIR/layers.json (every number, the settings and sample sizes) and DIR/layers.png
(one line per property against layer), and prints the table.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import sys

from absl import logging
import jax
import jax.numpy as jnp
import librosa
import matplotlib
import ml_collections
import numpy as np

from sslax import extract
from sslax.analysis import cca
from sslax.data import decode, splits, unit_shards
from sslax.features import mfcc
from sslax.models import backbone
from sslax.registry import model_types
from sslax.units import job, quality

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  isort: skip  (after choosing the backend)

FRONTEND = "frontend"
PROPERTIES = ("acoustic", "phonetic", "lexical")
ACOUSTIC = ("logmel", "mfcc")
ACOUSTIC_HOP = 160  # samples between the 100 Hz acoustic frames
LOGMEL_BINS = 80
LOG_FLOOR = 1e-10
NORMALIZE_EPS = 1e-7  # the variance floor of --normalize (sslax.units.sources)


@dataclasses.dataclass
class Utterance:
  """One example's audio and alignments.

  Attributes:
    key: the example's id.
    waveform: f32[S] samples at 16 kHz.
    phones, words: (label, start, end) spans in samples, ordered.
  """

  key: str
  waveform: np.ndarray
  phones: list[tuple[str, int, int]]
  words: list[tuple[str, int, int]]


def _spans(example: dict, feature: str, label: str, where: str) -> list[tuple[str, int, int]]:
  if feature not in example:
    raise ValueError(f"{where} has no {feature!r} feature: the analysis needs its alignments")
  spans = example[feature]
  names = [x.decode() if isinstance(x, bytes) else str(x) for x in spans[label]]
  return list(zip(names, map(int, spans["start"]), map(int, spans["end"]), strict=True))


def read_utterances(
  name: str, split: str, data_dir: str, max_utterances: int, seed: int
) -> list[Utterance]:
  """Up to `max_utterances` examples of a split (a seeded sample when it has more), in
  index order, with their `phonemes` and `words` alignments."""
  source, audio_key = splits.open_split(name, split, data_dir)
  where = f"{name}:{split}"
  count = len(source)
  if count < 2:
    raise ValueError(f"{where} has {count} examples; the analysis needs 2 or more")
  indices = np.arange(count)
  if count > max_utterances:
    indices = np.sort(np.random.default_rng(seed).choice(count, max_utterances, replace=False))
  data = ml_collections.ConfigDict(dict(name=name, split=split, key_feature="id"))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    keys, waveforms = job.read_examples(source, audio_key, data, indices, pool, "layers")
  utterances = []
  for index, key, waveform in zip(indices.tolist(), keys, waveforms, strict=True):
    example = source[index]
    utterances.append(
      Utterance(
        key,
        waveform,
        _spans(example, quality.PHONES_FEATURE, "phoneme", where),
        _spans(example, "words", "word", where),
      )
    )
  return utterances


def frontend_outputs(
  model_config: ml_collections.ConfigDict,
  params,
  model_state: dict,
  waveforms: list[np.ndarray],
  *,
  batch_size: int,
  pad_multiple: int,
) -> list[np.ndarray]:
  """f32[frames_u, C] frontend output of each utterance alone (as `extract.extract`
  batches: right-padded, which the padding-aware frontends ignore).

  The model runs whole with the frontend's output captured; nothing downstream of it is
  returned, so XLA can drop the encoder from the compiled computation.
  """
  model = model_types.build_model(model_config)
  eval_kwargs = model_types.eval_kwargs(model_config)

  @jax.jit
  def features(params, model_state, audio_BxS, paddings_BxS):
    frames = backbone.num_frames(audio_BxS.shape[1], model_config)
    _, captured = model.apply(
      {"params": params, **model_state},
      audio_BxS,
      paddings_BxS,
      jnp.zeros((audio_BxS.shape[0], frames), bool),
      train=False,
      capture_intermediates=lambda module, method: (
        module.name == "frontend" and method == "__call__"
      ),
      mutable=["intermediates"],
      **eval_kwargs,
    )
    features_BxFxC, _ = captured["intermediates"]["frontend"]["__call__"][0]
    return features_BxFxC.astype(jnp.float32)

  results = []
  for start in range(0, len(waveforms), batch_size):
    batch = waveforms[start : start + batch_size]
    num_samples = max(-(-max(len(w) for w in batch) // pad_multiple), 1) * pad_multiple
    audio_BxS = np.zeros((batch_size, num_samples), np.float32)
    paddings_BxS = np.ones((batch_size, num_samples), np.float32)
    for b, w in enumerate(batch):
      audio_BxS[b, : len(w)] = w
      paddings_BxS[b, : len(w)] = 0.0
    out = np.asarray(features(params, model_state or {}, audio_BxS, paddings_BxS))
    results.extend(out[b, : backbone.num_frames(len(w), model_config)] for b, w in enumerate(batch))
  return results


def acoustic_frames(waveform: np.ndarray, centres_T: np.ndarray, kind: str) -> np.ndarray:
  """f32[T, F] the 10 ms acoustic frame nearest each model frame centre (samples).

  'logmel': log of librosa's 80-bin mel power spectrogram (512-point FFT of 400-sample
  Hann windows every 160 samples, centred: frame m on sample 160 m). 'mfcc': the 13
  Kaldi MFCCs of sslax/features/mfcc.py (whole windows: frame m on 160 m + 200).
  """
  if kind == "logmel":
    mel_MxB = librosa.feature.melspectrogram(
      y=np.asarray(waveform, np.float32),
      sr=decode.SAMPLE_RATE,
      n_fft=512,
      win_length=400,
      hop_length=ACOUSTIC_HOP,
      n_mels=LOGMEL_BINS,
      center=True,
      pad_mode="constant",
    ).T
    frames_MxF, offset = np.log(np.maximum(mel_MxB, LOG_FLOOR)), 0
  elif kind == "mfcc":
    frames_MxF, offset = mfcc.mfcc(waveform), mfcc.FRAME_LENGTH // 2
  else:
    raise ValueError(f"--acoustic must be one of {ACOUSTIC}, got {kind!r}")
  if not len(frames_MxF):
    raise ValueError(f"a {len(waveform)}-sample utterance has no {kind} frames")
  nearest = np.clip(np.round((centres_T - offset) / ACOUSTIC_HOP), 0, len(frames_MxF) - 1)
  return frames_MxF[nearest.astype(np.int64)].astype(np.float32)


def segment_means(frames_TxD: np.ndarray, span_T: np.ndarray, num_spans: int):
  """(f64[S', D] the mean frame of each span that has frames, i64[S'] those spans' indices).

  `span_T` is each frame's span (-1: none), as `quality.frame_spans`; spans shorter than a
  frame hop can own no frame centre and are left out.
  """
  inside = span_T >= 0
  counts = np.bincount(span_T[inside], minlength=num_spans)
  sums = np.zeros((num_spans, frames_TxD.shape[1]), np.float64)
  np.add.at(sums, span_T[inside], frames_TxD[inside])
  kept = np.flatnonzero(counts)
  return sums[kept] / counts[kept, None], kept


def one_hot(labels: list[str], classes: dict[str, int]) -> np.ndarray:
  """f64[N, len(classes)], a zero row for a label outside `classes`."""
  out = np.zeros((len(labels), len(classes)))
  for row, label in enumerate(labels):
    if label in classes:
      out[row, classes[label]] = 1.0
  return out


def probe_accuracy(
  x_fit: np.ndarray, labels_fit: list[str], x_eval: np.ndarray, labels_eval: list[str], l2: float
) -> float:
  """Accuracy on the eval items of a linear classifier fitted on the fit items.

  Ridge regression of one-hot labels on the features (standardised with the fit items'
  statistics, plus a bias), W = (X'X / N + l2 I)^-1 X'Y / N in float64, predicting the
  largest output. Eval labels never seen in fitting count as errors.
  """
  classes = {c: i for i, c in enumerate(sorted(set(labels_fit)))}
  mean, std = x_fit.mean(0), x_fit.std(0) + 1e-8

  def design(x):
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.ones((len(z), 1))], axis=1)

  a_fit = design(x_fit)
  gram = a_fit.T @ a_fit / len(a_fit) + l2 * np.eye(a_fit.shape[1])
  weights = np.linalg.solve(gram, a_fit.T @ one_hot(labels_fit, classes) / len(a_fit))
  names = np.asarray(sorted(classes, key=classes.get))
  predicted = names[np.argmax(design(x_eval) @ weights, axis=1)]
  return float(np.mean(predicted == np.asarray(labels_eval)))


@dataclasses.dataclass
class Views:
  """One half of the utterances, every layer and property pooled over its utterances.

  Attributes:
    frames: {layer: f32[T, D]} every frame; acoustic: f32[T, F] the same frames.
    phone_frames: {layer: f32[P, D]} frames under a phone; phone_frame_labels: [P].
    phone_segments: {layer: f64[S, D]} phone segment means; phone_labels: [S].
    word_segments: {layer: f64[W, D]} segment means of in-vocabulary words; words: [W].
  """

  frames: dict
  acoustic: np.ndarray
  phone_frames: dict
  phone_frame_labels: list
  phone_segments: dict
  phone_labels: list
  word_segments: dict
  words: list


def pool_views(states, utterances, model_config, acoustic: str, vocabulary: set) -> Views:
  """`Views` of utterances from their per-layer states ({layer: f32[T_u, D]} each)."""
  rate = backbone.frame_rate_hz(model_config)
  offset = backbone.frame_centre_offset(model_config)
  layers = list(states[0])
  parts = {k: {layer: [] for layer in layers} for k in ("frames", "phone", "segment", "word")}
  acoustic_rows, phone_frame_labels, phone_labels, words = [], [], [], []
  for state, utt in zip(states, utterances, strict=True):
    num_frames = len(state[layers[0]])
    centres = np.arange(num_frames) * (decode.SAMPLE_RATE / rate) + offset
    acoustic_rows.append(acoustic_frames(utt.waveform, centres, acoustic))
    phone_T = quality.frame_spans(
      [s for _, s, _ in utt.phones], [e for _, _, e in utt.phones], num_frames, rate, offset
    )
    word_T = quality.frame_spans(
      [s for _, s, _ in utt.words], [e for _, _, e in utt.words], num_frames, rate, offset
    )
    in_vocabulary = np.asarray([w in vocabulary for w, _, _ in utt.words] + [False])
    word_T = np.where(in_vocabulary[word_T], word_T, -1)  # -1 indexes the trailing False
    phone_frame_labels += [utt.phones[i][0] for i in phone_T[phone_T >= 0]]
    for layer in layers:
      h_TxD = state[layer]
      parts["frames"][layer].append(h_TxD)
      parts["phone"][layer].append(h_TxD[phone_T >= 0])
      means, kept_phones = segment_means(h_TxD, phone_T, len(utt.phones))
      parts["segment"][layer].append(means)
      means, kept_words = segment_means(h_TxD, word_T, len(utt.words))
      parts["word"][layer].append(means)
    phone_labels += [utt.phones[i][0] for i in kept_phones]
    words += [utt.words[i][0] for i in kept_words]

  def joined(key):
    return {layer: np.concatenate(rows) for layer, rows in parts[key].items()}

  return Views(
    frames=joined("frames"),
    acoustic=np.concatenate(acoustic_rows),
    phone_frames=joined("phone"),
    phone_frame_labels=phone_frame_labels,
    phone_segments=joined("segment"),
    phone_labels=phone_labels,
    word_segments=joined("word"),
    words=words,
  )


def _score(
  x_fit, y_fit, x_eval, y_eval, keep_variance: float, epsilon: float, keep_variance_y=1.0
) -> dict:
  result = cca.pwcca(
    x_fit,
    y_fit,
    x_eval,
    y_eval,
    keep_variance_x=keep_variance,
    keep_variance_y=keep_variance_y,
    epsilon=epsilon,
  )
  return {k: result[k] for k in ("pwcca", "mean", "dims_x", "dims_y", "weighted_view")}


def analyse(
  checkpoint_path: str,
  *,
  data: str,
  split: str,
  data_dir: str = "",
  max_utterances: int = 200,
  seed: int = 0,
  acoustic: str = "logmel",
  min_word_count: int = 5,
  keep_variance: float = 0.99,
  epsilon: float = cca.DEFAULT_EPSILON,
  probe_l2: float = 1e-3,
  normalize: bool = False,
  batch_size: int = 8,
  pad_multiple: int = 16_000,
) -> dict:
  """The measurements of the module docstring; the dict `layers.json` holds."""
  if acoustic not in ACOUSTIC:
    raise ValueError(f"--acoustic must be one of {ACOUSTIC}, got {acoustic!r}")
  loaded = extract.load(checkpoint_path)
  model_config = loaded.model_config
  where = f"{data}:{split}"
  logging.info("reading up to %d utterances of %s", max_utterances, where)
  utterances = read_utterances(data, split, data_dir, max_utterances, seed)
  counts: dict[str, int] = {}
  for utt in utterances:
    for word, _, _ in utt.words:
      counts[word] = counts.get(word, 0) + 1
  vocabulary = {w for w, n in counts.items() if n >= min_word_count}
  if len(vocabulary) < 2:
    raise ValueError(
      f"{len(vocabulary)} words of {where} occur {min_word_count}+ times in the "
      f"{len(utterances)} utterances: lower --min_word_count or raise --max_utterances"
    )
  waveforms = [u.waveform for u in utterances]
  if normalize:
    waveforms = [(w - w.mean()) / np.sqrt(w.var() + NORMALIZE_EPS) for w in waveforms]
  hidden_layers = list(range(model_config.num_layers + 1))
  logging.info("hidden states of %d utterances (%d layers)", len(waveforms), len(hidden_layers))
  batching = dict(batch_size=batch_size, pad_multiple=pad_multiple)
  hidden = extract.extract(
    model_config,
    loaded.params,
    waveforms,
    hidden_layers,
    model_state=loaded.model_state,
    **batching,
  )
  local = frontend_outputs(model_config, loaded.params, loaded.model_state, waveforms, **batching)
  states = [{FRONTEND: f, **h} for f, h in zip(local, hidden, strict=True)]
  layers = [FRONTEND, *hidden_layers]

  order = np.random.default_rng(seed).permutation(len(utterances))
  halves = {"fit": np.sort(order[: len(order) // 2]), "eval": np.sort(order[len(order) // 2 :])}
  views = {
    half: pool_views(
      [states[i] for i in idx], [utterances[i] for i in idx], model_config, acoustic, vocabulary
    )
    for half, idx in halves.items()
  }
  fit, held = views["fit"], views["eval"]
  phones = {p: i for i, p in enumerate(sorted(set(fit.phone_labels) | set(held.phone_labels)))}
  words = {w: i for i, w in enumerate(sorted(vocabulary))}
  chance_phone = max(set(fit.phone_frame_labels), key=fit.phone_frame_labels.count)
  chance = float(np.mean(np.asarray(held.phone_frame_labels) == chance_phone))

  rows = []
  for layer in layers:
    logging.info("layer %s: CCA and probe", layer)
    scores = dict(
      acoustic=_score(
        fit.frames[layer], fit.acoustic, held.frames[layer], held.acoustic, keep_variance, epsilon
      ),
      phonetic=_score(
        fit.phone_segments[layer],
        one_hot(fit.phone_labels, phones),
        held.phone_segments[layer],
        one_hot(held.phone_labels, phones),
        keep_variance,
        epsilon,
      ),
      lexical=_score(
        fit.word_segments[layer],
        one_hot(fit.words, words),
        held.word_segments[layer],
        one_hot(held.words, words),
        keep_variance,
        epsilon,
      ),
    )
    previous = layers[layers.index(layer) - 1] if layer != layers[0] else None
    if previous is not None:
      scores["previous_layer"] = _score(
        fit.frames[previous],
        fit.frames[layer],
        held.frames[previous],
        held.frames[layer],
        keep_variance,
        epsilon,
        keep_variance_y=keep_variance,
      )
    accuracy = probe_accuracy(
      fit.phone_frames[layer],
      fit.phone_frame_labels,
      held.phone_frames[layer],
      held.phone_frame_labels,
      probe_l2,
    )
    rows.append(
      dict(layer=layer, dim=int(fit.frames[layer].shape[1]), probe_accuracy=accuracy, **scores)
    )

  def sizes(key):
    return {half: len(getattr(v, key)) for half, v in views.items()}

  return dict(
    checkpoint=checkpoint_path,
    model=dict(
      type=model_types.model_type(model_config),
      frontend=model_config.get("frontend", "waveform"),
      encoder=model_config.get("encoder", "transformer"),
      num_layers=model_config.num_layers,
      embed_dim=model_config.embed_dim,
      frame_rate_hz=backbone.frame_rate_hz(model_config),
      frame_centre_offset=backbone.frame_centre_offset(model_config),
    ),
    data=data,
    split=split,
    utterances={half: len(idx) for half, idx in halves.items()},
    frames={half: len(v.acoustic) for half, v in views.items()},
    phone_frames=sizes("phone_frame_labels"),
    phone_segments=sizes("phone_labels"),
    word_segments=sizes("words"),
    phones=len(phones),
    words=len(words),
    probe_chance=chance,
    settings=dict(
      max_utterances=max_utterances,
      seed=seed,
      acoustic=acoustic,
      min_word_count=min_word_count,
      keep_variance=keep_variance,
      epsilon=epsilon,
      probe_l2=probe_l2,
      normalize=normalize,
    ),
    layers=rows,
  )


def table(result: dict) -> str:
  """The per-layer scores as a fixed-width text table."""
  lines = [
    f"{'layer':>8} {'dim':>5} {'acoustic':>9} {'phonetic':>9} {'lexical':>8} {'probe':>6}"
    f" {'previous':>9}"
  ]
  for row in result["layers"]:
    previous = row.get("previous_layer")
    lines.append(
      f"{row['layer']!s:>8} {row['dim']:>5} "
      + " ".join(f"{row[p]['pwcca']:>{w}.3f}" for p, w in zip(PROPERTIES, (9, 9, 8), strict=True))
      + f" {row['probe_accuracy']:>6.3f} "
      + (f"{previous['pwcca']:>9.3f}" if previous else f"{'-':>9}")
    )
  lines.append(f"probe chance (majority phone): {result['probe_chance']:.3f}")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  """Writes a PNG (atomically): each property's score against layer."""
  labels = ["F" if r["layer"] == FRONTEND else str(r["layer"]) for r in result["layers"]]
  x = np.arange(len(labels))
  figure, axes = plt.subplots(figsize=(6.4, 4.2))
  for prop in PROPERTIES:
    axes.plot(x, [r[prop]["pwcca"] for r in result["layers"]], marker="o", label=f"{prop} (PWCCA)")
  probe = [r["probe_accuracy"] for r in result["layers"]]
  axes.plot(x, probe, marker="s", label="phone probe accuracy")
  axes.axhline(result["probe_chance"], color="grey", linestyle=":", label="probe chance")
  axes.set_xticks(x, labels)
  axes.set_xlabel("layer (F: frontend output; 0: encoder input)")
  axes.set_ylabel("held-out score")
  axes.set_ylim(bottom=min(0.0, *(r[p]["pwcca"] for r in result["layers"] for p in PROPERTIES)))
  name = os.path.basename(os.path.normpath(result["checkpoint"]))
  axes.set_title(f"{name} on {result['data']}:{result['split']}", fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  tmp = f"{path}.tmp{os.getpid()}"
  figure.savefig(tmp, format="png", dpi=120)
  plt.close(figure)
  os.replace(tmp, path)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """--help shows the module docstring as written and every flag's default."""


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m sslax.analysis.layers",
    description=__doc__,
    formatter_class=_HelpFormatter,
  )
  parser.add_argument(
    "--checkpoint", required=True, help="training workdir, sslax checkpoint dir or hf:HF_DIR"
  )
  parser.add_argument("--data", default="sslax_demo_corpus", help="TFDS dataset name")
  parser.add_argument("--split", default="dev", help="split to analyse (e.g. dev, 'dev[:20]')")
  parser.add_argument("--out", required=True, help="directory for layers.json and layers.png")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir ('' = the default)")
  parser.add_argument(
    "--max_utterances", type=int, default=200, help="a seeded sample of at most this many"
  )
  parser.add_argument("--seed", type=int, default=0, help="utterance sample and fit/eval halves")
  parser.add_argument("--acoustic", choices=ACOUSTIC, default="logmel", help="acoustic features")
  parser.add_argument(
    "--min_word_count", type=int, default=5, help="lexical view: words seen this often"
  )
  parser.add_argument(
    "--keep_variance",
    type=float,
    default=0.99,
    help="share of a layer's variance its SVD reduction keeps before CCA",
  )
  parser.add_argument(
    "--epsilon", type=float, default=cca.DEFAULT_EPSILON, help="CCA ridge (x mean variance)"
  )
  parser.add_argument("--probe_l2", type=float, default=1e-3, help="phone probe ridge")
  parser.add_argument(
    "--normalize", action="store_true", help="zero-mean unit-variance waveforms (if trained so)"
  )
  parser.add_argument("--batch_size", type=int, default=8, help="utterances per forward pass")
  parser.add_argument("--pad_multiple", type=int, default=16_000, help="pad lengths to this")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  result = analyse(
    args.checkpoint,
    data=args.data,
    split=args.split,
    data_dir=args.data_dir,
    max_utterances=args.max_utterances,
    seed=args.seed,
    acoustic=args.acoustic,
    min_word_count=args.min_word_count,
    keep_variance=args.keep_variance,
    epsilon=args.epsilon,
    probe_l2=args.probe_l2,
    normalize=args.normalize,
    batch_size=args.batch_size,
    pad_multiple=args.pad_multiple,
  )
  os.makedirs(args.out, exist_ok=True)
  unit_shards.write_json(os.path.join(args.out, "layers.json"), result)
  plot(result, os.path.join(args.out, "layers.png"))
  print(table(result))
  print(f"wrote {args.out}/layers.json and layers.png")


if __name__ == "__main__":
  main(sys.argv[1:])
