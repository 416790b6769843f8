"""XLS-R configs (configs/xlsr*.py): sizes, parameter counts, the mixture and its weights."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
import transformers

from configs import common, xlsr
from sslax import describe
from sslax.data import mixture, pretraining_stream
from sslax.models import backbone

# (file, parameters, the paper's rounded size, the Wav2Vec2Config fields of Hugging Face's
# facebook/wav2vec2-xls-r-*/config.json that differ from the library's defaults).
SIZES = [
  (
    "configs/xlsr_0.3b.py",
    317_390_592,
    0.3e9,
    dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, codevector_dim=768),
  ),
  (
    "configs/xlsr_1b.py",
    965_514_752,
    1e9,
    dict(hidden_size=1280, num_hidden_layers=48, intermediate_size=5120, codevector_dim=1024),
  ),
  (
    "configs/xlsr_2b.py",
    2_162_932_352,
    2e9,
    dict(hidden_size=1920, num_hidden_layers=48, intermediate_size=7680, codevector_dim=1024),
  ),
]


def _hf_num_params(fields: dict) -> int:
  config = transformers.Wav2Vec2Config(
    num_attention_heads=16,
    feat_extract_norm="layer",
    conv_bias=True,
    do_stable_layer_norm=True,
    proj_codevector_dim=fields["codevector_dim"],
    **fields,
  )
  with torch.device("meta"):
    model = transformers.Wav2Vec2ForPreTraining(config)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("path, expected, published, hf_fields", SIZES, ids=["0.3b", "1b", "2b"])
def test_sizes_and_parameter_counts(path, expected, published, hf_fields):
  config = describe.load_config(path)
  model = config.model
  assert (model.embed_dim, model.num_layers, model.mlp_dim) == (
    hf_fields["hidden_size"],
    hf_fields["num_hidden_layers"],
    hf_fields["intermediate_size"],
  )
  assert model.num_heads == 16 and model.layer_norm_first and model.extractor_mode == "layer_norm"
  assert describe.parameter_counts(config)["total"] == expected
  # Independently: transformers' model of the hub config, on the meta device.
  assert _hf_num_params(hf_fields) == expected
  assert abs(expected - published) < 0.1 * published


def test_schedule_and_default_mixture():
  config = describe.load_config("configs/xlsr_1b.py")
  assert config.total_steps == 1_000_000
  seconds = config.data.batch_size * config.data.max_samples / 16_000
  assert seconds / 60 == pytest.approx(80, rel=0.001)
  assert backbone.num_frames(config.data.max_samples, config.model) == 1000
  assert config.data.mixture_alpha == 0.5
  assert len(config.data.mixture) == 8 and ("mls_polish", "train") in config.data.mixture
  with pytest.raises(AttributeError):
    config.data.new_field = 1  # locked


def test_argument_replaces_the_mixture():
  config = describe.load_config("configs/xlsr_0.3b.py:voxpopuli_fr:train,mls_french:dev")
  assert config.data.mixture == (("voxpopuli_fr", "train"), ("mls_french", "dev"))
  assert (config.data.name, config.data.split) == ("voxpopuli_fr", "train")
  with pytest.raises(ValueError, match="'mls_french' is not NAME:SPLIT"):
    xlsr.parse_mixture("voxpopuli_fr:train,mls_french")


def test_language_weights_follow_the_temperature_rule():
  alpha = describe.load_config("configs/xlsr_2b.py").data.mixture_alpha
  # Fake sizes spanning four orders of magnitude, as VoxPopuli English to a BABEL language.
  n = np.array([120_000, 8_000, 900, 40], np.float64)
  expected = (n / n.sum()) ** 0.5
  expected /= expected.sum()
  np.testing.assert_allclose(mixture.probabilities(n, alpha), expected, rtol=1e-12)
  # Hand-computed: 100 and 25 utterances weigh 10 and 5.
  np.testing.assert_allclose(mixture.probabilities(np.array([100, 25]), alpha), [2 / 3, 1 / 3])


def test_a_missing_source_is_named(tmp_path):
  config = describe.load_config("configs/xlsr_0.3b.py")
  data = config.data.copy_and_resolve_references()
  data.data_dir = str(tmp_path)
  with pytest.raises(tfds.core.registered.DatasetNotFoundError, match="mls_english not found"):
    pretraining_stream.PretrainingStream(
      data,
      common.pretrain_config().masking,
      lambda n: int(backbone.num_frames(n, config.model)),
      seed=0,
      process_index=0,
      process_count=1,
    )
