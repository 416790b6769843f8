"""HuBERT interop beyond the parity tests it shares with wav2vec 2.0 (tests/test_interop_hf.py).

Options of transformers' HuBERT that sslax does not have are named; `sslax.extract` reads
HF and sslax HuBERT checkpoints (hidden states equal transformers' on each file alone
within 1e-4 absolute in float32, as in tests/test_extract.py); sslax checkpoints record
their model type; the parameter counts of configs/hubert_base.py and hubert_large.py
equal transformers' `HubertModel` of the same config, and `sslax.describe` reports them.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.traverse_util  # noqa: E402
import hf_models  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import common, demo, hubert_base, hubert_large  # noqa: E402
from sslax import describe, extract  # noqa: E402
from sslax.interop import hf, hf_config_fields, hf_families  # noqa: E402
from sslax.registry import checkpoint, model_types  # noqa: E402

ATOL = 1e-4
SMALL = dict(
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  conv_dim=(32,) * 7,
  num_conv_pos_embeddings=16,
  num_conv_pos_embedding_groups=4,
)
HEAD = ["final_proj/bias", "final_proj/kernel", "label_embs_concat"]
LENGTHS = {"a": 8000, "sub/b": 3300}


@pytest.fixture(scope="module")
def hf_hubert(tmp_path_factory):
  """A small random HubertModel (Large-like: layer norm, pre-LN, conv bias) and its dir."""
  config = transformers.HubertConfig(
    **SMALL, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
  )
  torch.manual_seed(0)
  model = hf_models.perturbed(transformers.HubertModel(config).eval())
  hf_dir = str(tmp_path_factory.mktemp("hf_hubert"))
  model.save_pretrained(hf_dir)
  return model, hf_dir


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("feat_proj_layer_norm", False, "feat_proj_layer_norm"),
    ("conv_pos_batch_norm", True, "conv_pos_batch_norm"),
    ("architectures", ["HubertForCTC"], "HubertForCTC"),
    ("hidden_act", "relu", "hidden_act"),
  ],
)
def test_unsupported_hubert_options_are_named(key, value, match):
  hf_config = dict(transformers.HubertConfig(**SMALL).to_dict(), architectures=[hf_families.HUBERT])
  model_config = hf_config_fields.model_config_from_hf(hf_config)
  assert model_types.model_type(model_config) == "hubert"
  hf_config[key] = value
  with pytest.raises(ValueError, match=match):
    hf_config_fields.model_config_from_hf(hf_config)


def test_extract_reads_hf_and_sslax_hubert_checkpoints(hf_hubert, tmp_path, capsys):
  model, hf_dir = hf_hubert
  rng = np.random.default_rng(0)
  audio = {}
  for name, n in LENGTHS.items():
    path = tmp_path / "audio" / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, rng.uniform(-0.5, 0.5, n).astype(np.float32), 16_000, subtype="FLOAT")
    audio[name] = soundfile.read(path, dtype="float32")[0]

  out = tmp_path / "feats.npz"
  extract.run(
    f"hf:{hf_dir}", str(tmp_path / "audio"), "all", str(out), batch_size=2, pad_multiple=1600
  )
  feats = dict(np.load(out))
  assert sorted(feats.keys()) == sorted(f"{name}/layer_{i}" for name in LENGTHS for i in range(3))
  for name, samples in audio.items():
    with torch.no_grad():
      theirs = model(torch.from_numpy(samples)[None], output_hidden_states=True)
    # transformers records the pre-LN encoder's last state before its final LayerNorm.
    hidden = [h[0].numpy() for h in theirs.hidden_states[:-1]]
    hidden.append(theirs.last_hidden_state[0].numpy())
    for i, h in enumerate(hidden):
      diff = np.max(np.abs(feats[f"{name}/layer_{i}"] - h))
      print(f"hubert {name} layer {i}: {diff:.2e}")
      assert diff <= ATOL, (name, i, diff)

  # Imported into an sslax checkpoint, which records the model type, head named as fresh:
  # extraction reads the same model back.
  hf.main(["import", "--from", hf_dir, "--to", str(tmp_path / "sslax")])
  assert f"initialised afresh: {', '.join(HEAD)}" in capsys.readouterr().out
  with open(tmp_path / "sslax" / checkpoint.CONFIG_FILE) as f:
    assert json.load(f)["model_type"] == "hubert"
  model_config, params = extract.load_model(str(tmp_path / "sslax"))
  hf_config, hf_params = extract.load_model(f"hf:{hf_dir}")
  assert model_config.to_dict() == hf_config.to_dict()
  jax.tree.map(np.testing.assert_array_equal, params, hf_params)


def _zero_params(model_config):
  shapes = model_types.param_shapes(model_config)
  return flax.traverse_util.unflatten_dict(
    {path: np.zeros(shape, np.float32) for path, shape in shapes.items()}, sep="/"
  )


def test_checkpoints_record_the_model_type(tmp_path):
  hubert_config = common.hubert_model(num_layers=1, num_classes=(100, 50))
  checkpoint.save_sslax_checkpoint(str(tmp_path / "h"), hubert_config, _zero_params(hubert_config))
  with open(tmp_path / "h" / checkpoint.CONFIG_FILE) as f:
    fields = json.load(f)
  assert fields["model_type"] == "hubert" and fields["num_classes"] == [100, 50]
  loaded_config, _ = checkpoint.load_sslax_checkpoint(str(tmp_path / "h"))
  assert loaded_config.to_dict() == hubert_config.to_dict()
  assert isinstance(model_types.build_model(loaded_config), model_types.MODELS["hubert"])

  # Written before HuBERT: no model_type, a wav2vec 2.0 model.
  wav2vec2_config = demo.get_config("tiny").model
  path = tmp_path / "w"
  checkpoint.save_sslax_checkpoint(str(path), wav2vec2_config, _zero_params(wav2vec2_config))
  with open(path / checkpoint.CONFIG_FILE) as f:
    fields = json.load(f)
  assert fields.pop("model_type") == "wav2vec2"
  with open(path / checkpoint.CONFIG_FILE, "w") as f:
    json.dump(fields, f)
  loaded_config, _ = checkpoint.load_sslax_checkpoint(str(path))
  assert loaded_config.to_dict() == wav2vec2_config.to_dict()
  assert model_types.model_type(loaded_config) == "wav2vec2"

  with open(path / checkpoint.CONFIG_FILE, "w") as f:
    json.dump(dict(fields, model_type="hubert"), f)
  with pytest.raises(ValueError, match="model_type 'hubert'.* those of 'wav2vec2'"):
    checkpoint.load_sslax_checkpoint(str(path))
  fields = hubert_config.to_dict()
  del fields["num_classes"]
  with pytest.raises(ValueError, match=r"closest 'hubert' lacks \['num_classes'\]"):
    model_types.model_type(ml_collections.ConfigDict(fields))


def _hf_num_params(**fields):
  with torch.device("meta"):
    model = transformers.HubertModel(transformers.HubertConfig(**fields))
  return sum(p.numel() for p in model.parameters())


# facebook/hubert-base-ls960's layout and the Large layout of fairseq's yaml, built locally.
ARCHITECTURE_KEYS = (
  "model_type",
  "conv_dim",
  "conv_kernel",
  "conv_stride",
  "conv_bias",
  "feat_extract_norm",
  "feat_proj_layer_norm",
  "conv_pos_batch_norm",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
  "do_stable_layer_norm",
  "num_conv_pos_embeddings",
  "num_conv_pos_embedding_groups",
)
LARGE_FIELDS = dict(
  hidden_size=1024,
  num_hidden_layers=24,
  num_attention_heads=16,
  intermediate_size=4096,
  feat_extract_norm="layer",
  do_stable_layer_norm=True,
)


@pytest.mark.parametrize(
  "config_module, fields, backbone, head",
  [
    (hubert_base, {}, 94_371_712, 768 * 256 + 256 + 500 * 256),
    (hubert_large, LARGE_FIELDS, 315_435_136, 1024 * 768 + 768 + 500 * 768),
  ],
)
def test_parameter_counts_equal_transformers(config_module, fields, backbone, head):
  config = config_module.get_config()
  counts = describe.parameter_counts(config)
  assert counts["final_proj"] + counts["label_embs_concat"] == head
  assert _hf_num_params(**fields) == counts["total"] - head == backbone
  # Export writes that architecture.
  exported = hf_config_fields.hf_config_from_model(config.model)
  reference = transformers.HubertConfig(**fields).to_dict()
  for key in ARCHITECTURE_KEYS:
    assert np.array_equal(exported[key], reference[key]), key


def test_describe_reports_hubert():
  config = hubert_base.get_config()
  flops = describe.forward_flops(config.model, 250_000)
  # 781 frames: post_extract_proj, final_proj, cosines with 500 cluster embeddings.
  assert flops["heads"] == 2 * 781 * (512 * 768 + 768 * 256 + 256 * 500)
  assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))
  table = describe.format_parameter_table(describe.parameter_counts(config))
  assert table.splitlines()[-1].split() == ["total", "94,696,576"]
  assert "heads" in describe.format_flops_table(config)


@pytest.mark.parametrize("field, value", [("frontend", "logmel"), ("encoder", "conformer")])
def test_export_refuses_what_transformers_cannot_hold(field, value):
  with pytest.raises(ValueError, match=f"config.model.{field}='{value}' has no transformers"):
    hf_config_fields.hf_config_from_model(common.hubert_model(**{field: value}))
