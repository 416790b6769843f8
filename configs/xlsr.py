"""What the XLS-R configs (xlsr_0.3b.py, xlsr_1b.py, xlsr_2b.py) share (Babu et al. 2021).

XLS-R is wav2vec 2.0 Large's recipe (pre-LN Transformer, layer-norm conv extractor with
bias, no dropout) at three sizes, pretrained on many languages at once with each language
drawn with probability p_l ∝ (n_l / N)^0.5 (`config.data.mixture_alpha`; sslax counts
n_l in usable utterances, sslax/data/mixture.py). The paper's 128 languages come from
VoxPopuli, MLS, CommonVoice, VoxLingua107 and BABEL, none of them a TFDS dataset, so
the mixture is a list of (TFDS name, split) sources the user prepares. The default is
Multilingual LibriSpeech (Pratap et al. 2020), one dataset per language, named after the
folders of its release and built with sslax's manifest tool, e.g.

  python -m sslax.data.manifest --name=mls_german --data_dir=/data/tfds \
    --split=train=/data/mls_german/train/audio

A source that has not been built stops the run with TFDS's error naming it. Another list
is the config argument, comma-separated NAME:SPLIT entries:

  python -m sslax.main --config=configs/xlsr_1b.py:voxpopuli_fr:train,mls_french:train ...
"""

import ml_collections

from configs import common

# Multilingual LibriSpeech's eight languages, as its release names them.
MLS_LANGUAGES = (
  "english",
  "german",
  "dutch",
  "french",
  "spanish",
  "italian",
  "portuguese",
  "polish",
)
DEFAULT_MIXTURE = tuple((f"mls_{language}", "train") for language in MLS_LANGUAGES)


def parse_mixture(arg: str | None) -> tuple[tuple[str, str], ...]:
  """The config argument 'NAME:SPLIT,NAME:SPLIT,...' as (name, split) pairs; None or ''
  gives `DEFAULT_MIXTURE`. Raises ValueError naming an entry that is not NAME:SPLIT."""
  if not arg:
    return DEFAULT_MIXTURE
  sources = []
  for entry in arg.split(","):
    name, _, split = entry.strip().partition(":")
    if not name or not split:
      raise ValueError(f"XLS-R config argument entry {entry!r} is not NAME:SPLIT (in {arg!r})")
    sources.append((name, split))
  return tuple(sources)


def pretrain_config(
  arg: str | None, *, embed_dim: int, num_layers: int, mlp_dim: int, final_dim: int
) -> ml_collections.ConfigDict:
  """A locked XLS-R pretraining config of the given size over the sources of `arg`.

  Architecture: the Hugging Face facebook/wav2vec2-xls-r-{300m,1b,2b} config.json
  (16 heads, 7 conv layers of 512 channels, feat_extract_norm 'layer', conv_bias,
  do_stable_layer_norm, 2 x 320 codevectors, codevector_dim = proj_codevector_dim =
  `final_dim`). Schedule: 1M updates (fairseq's released xlsr2_960m_1000k.pt and
  xlsr2_2B_1000k.pt are named by it) with wav2vec2_large_librivox.yaml's optimizer and
  Gumbel schedule; 240 crops of 320,080 samples (20 s, 1000 frames) per update, 80
  minutes of audio.
  """
  c = common.pretrain_config()
  c.total_steps = 1_000_000
  c.data.mixture = parse_mixture(arg)
  # Training reads data.mixture; config.valid.split, if set, is a split of the first source.
  c.data.name, c.data.split = c.data.mixture[0]
  c.data.mixture_alpha = 0.5
  c.data.batch_size = 240
  c.data.max_samples = 320_080
  c.data.normalize = True
  c.model = common.wav2vec2_model(
    extractor_mode="layer_norm",
    conv_bias=True,
    embed_dim=embed_dim,
    num_layers=num_layers,
    num_heads=16,
    mlp_dim=mlp_dim,
    layer_norm_first=True,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
    layerdrop=0.0,
    feature_grad_mult=1.0,
    final_dim=final_dim,
  )
  c.objective.feature_penalty_weight = 0.0
  c.gumbel.end = 0.1
  c.optim.learning_rate = 5e-3
  c.lock()
  return c
