"""Tests for sslax.interop.hf against Hugging Face transformers (the independent reference).

Small transformers models (wav2vec 2.0 and HuBERT) with random weights (every parameter
perturbed, so norms and biases are not at their initial values) are saved, imported and
run on the same random batch; every hidden state (transformers `output_hidden_states`:
index 0 the input to the first layer) must agree within ATOL = 1e-4 absolute in float32,
as must the wav2vec 2.0 pretraining head's outputs (project_hid, and project_q of the
argmax codevectors).

Padding: sslax's group norm takes statistics over valid frames only, transformers'
over the zero padding too. So layer-norm extractors are compared on the padded batch
(transformers with attention_mask, sslax with audio_paddings, valid frames only), and
group-norm extractors as sslax on the padded batch against transformers on each utterance
alone, unpadded: the answer both should give.

transformers >= 5 records a stable-layer-norm encoder's last hidden state before its final
LayerNorm (`last_hidden_state` is after it); sslax's last hidden state is after it, so
that one is compared with `last_hidden_state`.

Export then reload in transformers must give back the original tensors bitwise.
"""

import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_models  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import common, demo, w2v_base, w2v_large  # noqa: E402
from sslax.interop import hf, hf_config_fields, hf_families, hf_state_dict  # noqa: E402
from sslax.models import frontends  # noqa: E402
from sslax.registry import checkpoint, model_types  # noqa: E402

ATOL = 1e-4
LENGTHS = (8000, 5600, 3300)  # samples: 24, 17 and 10 frames
SMALL = dict(
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  conv_dim=(32,) * 7,
  num_conv_pos_embeddings=16,
  num_conv_pos_embedding_groups=4,
)
# Wav2Vec2Config only: the quantizer (HubertConfig has none).
SMALL_QUANTIZER = dict(num_codevectors_per_group=8, codevector_dim=16, proj_codevector_dim=12)
ARCHITECTURE_KEYS = (
  "conv_dim",
  "conv_kernel",
  "conv_stride",
  "conv_bias",
  "feat_extract_norm",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
  "do_stable_layer_norm",
  "num_conv_pos_embeddings",
  "num_conv_pos_embedding_groups",
  "num_codevectors_per_group",
  "num_codevector_groups",
  "codevector_dim",
  "proj_codevector_dim",
)
# name: (feat_extract_norm, do_stable_layer_norm, conv_bias, mask_time_prob, architecture);
# a model with mask_time_prob 0 has no masked_spec_embed either. The HuBERT variants are
# fairseq's Base (group norm, post-LN) and Large (layer norm, pre-LN) layouts.
VARIANTS = {
  "group-postln-pretraining": ("group", False, False, 0.05, hf_families.PRETRAINING),
  "layer-stable-pretraining": ("layer", True, True, 0.05, hf_families.PRETRAINING),
  "group-postln-model-bias": ("group", False, True, 0.05, hf_families.BASE_MODEL),
  "layer-stable-model": ("layer", True, False, 0.05, hf_families.BASE_MODEL),
  "layer-postln-pretraining": ("layer", False, True, 0.05, hf_families.PRETRAINING),
  "group-stable-model-nomask": ("group", True, False, 0.0, hf_families.BASE_MODEL),
  "hubert-group-postln": ("group", False, False, 0.05, hf_families.HUBERT),
  "hubert-layer-stable-bias-nomask": ("layer", True, True, 0.0, hf_families.HUBERT),
}
# What import initialises afresh, by architecture (besides mask_emb without masked_spec_embed).
FRESH_HEAD = {
  hf_families.PRETRAINING: [],
  hf_families.BASE_MODEL: [
    "final_proj/bias",
    "final_proj/kernel",
    "project_q/bias",
    "project_q/kernel",
    "quantizer/codevectors",
    "quantizer/logits/bias",
    "quantizer/logits/kernel",
  ],
  hf_families.HUBERT: ["final_proj/bias", "final_proj/kernel", "label_embs_concat"],
}


def _hf_model(norm, stable, conv_bias, mask_time_prob, architecture, seed=0):
  if architecture == hf_families.HUBERT:
    config_class, fields = transformers.HubertConfig, SMALL
  else:
    config_class, fields = transformers.Wav2Vec2Config, dict(SMALL, **SMALL_QUANTIZER)
  config = config_class(
    **fields,
    feat_extract_norm=norm,
    do_stable_layer_norm=stable,
    conv_bias=conv_bias,
    mask_time_prob=mask_time_prob,
  )
  torch.manual_seed(seed)
  return hf_models.perturbed(getattr(transformers, architecture)(config).eval())


def _sslax_outputs(model_config, params, audio_BxS, paddings_BxS):
  model = model_types.build_model(model_config)
  frames = frontends.num_frames(audio_BxS.shape[1], model_config.conv_layers)

  @jax.jit
  def run(params, audio_BxS, paddings_BxS):
    return model.apply(
      {"params": params},
      audio_BxS,
      paddings_BxS,
      jnp.zeros((audio_BxS.shape[0], frames), bool),
      train=False,
      return_hidden_states=True,
      **model_types.eval_kwargs(model_config),
    )

  return jax.tree.map(np.asarray, run(params, audio_BxS, paddings_BxS))


def _hf_outputs(model, audio_BxS, attention_mask_BxS=None):
  """Hidden states (the stable encoder's last after its LayerNorm) and head outputs."""
  pretraining = isinstance(model, transformers.Wav2Vec2ForPreTraining)
  base = model.wav2vec2 if pretraining else model
  audio = torch.from_numpy(audio_BxS)
  mask = None if attention_mask_BxS is None else torch.from_numpy(attention_mask_BxS)
  with torch.no_grad():
    out = base(audio, attention_mask=mask, output_hidden_states=True)
    hidden = [h.numpy() for h in out.hidden_states]
    hidden[-1] = out.last_hidden_state.numpy()
    result = {"hidden": hidden}
    if pretraining:
      head = model(audio, attention_mask=mask)
      result["projected"] = head.projected_states.numpy()
      result["targets"] = head.projected_quantized_states.numpy()
  return result


def _compare(name, sslax_out, hf_out, b, frames):
  """Max |difference| per hidden state (and head output) of utterance b's valid frames."""
  diffs = {}
  assert len(sslax_out.hidden_states) == len(hf_out["hidden"])
  for i, (ours, theirs) in enumerate(zip(sslax_out.hidden_states, hf_out["hidden"], strict=True)):
    diffs[f"hidden_{i}"] = np.max(np.abs(ours[b, :frames] - theirs[0, :frames]))
  if "projected" in hf_out:
    diffs["projected"] = np.max(
      np.abs(sslax_out.projected[b, :frames] - hf_out["projected"][0, :frames])
    )
    diffs["targets"] = np.max(np.abs(sslax_out.targets[b, :frames] - hf_out["targets"][0, :frames]))
  print(name, f"utterance {b}:", {k: f"{v:.2e}" for k, v in diffs.items()})
  bad = {k: v for k, v in diffs.items() if not v <= ATOL}
  assert not bad, f"{name} utterance {b} differs beyond {ATOL}: {bad}"


@pytest.fixture(scope="module", params=list(VARIANTS))
def imported(request, tmp_path_factory):
  """(name, transformers model, sslax checkpoint directory, fresh parameters) per variant."""
  name = request.param
  model = _hf_model(*VARIANTS[name])
  hf_dir = str(tmp_path_factory.mktemp("hf"))
  model.save_pretrained(hf_dir)
  sslax_dir = str(tmp_path_factory.mktemp("sslax"))
  model_config, params, fresh = hf.import_hf(hf_dir)
  checkpoint.save_sslax_checkpoint(sslax_dir, model_config, params)
  return name, model, sslax_dir, fresh


def test_hidden_states_match_transformers(imported):
  name, model, sslax_dir, _ = imported
  model_config, params = checkpoint.load_sslax_checkpoint(sslax_dir)
  audio_BxS, paddings_BxS = hf_models.padded_noise(LENGTHS)
  ours = _sslax_outputs(model_config, params, audio_BxS, paddings_BxS)
  assert len(ours.hidden_states) == model_config.num_layers + 1
  frames_B = frontends.num_frames(np.asarray(LENGTHS), model_config.conv_layers)
  if model_config.extractor_mode == "group_norm":
    for b, n in enumerate(LENGTHS):
      _compare(name, ours, _hf_outputs(model, audio_BxS[b : b + 1, :n]), b, frames_B[b])
  else:
    theirs = _hf_outputs(model, audio_BxS, (1 - paddings_BxS).astype(np.int64))
    for b in range(len(LENGTHS)):
      one = jax.tree.map(lambda x, b=b: x[b : b + 1], theirs)
      _compare(name, ours, one, b, frames_B[b])


def test_import_fills_and_names_what_a_base_model_lacks(imported):
  _, model, sslax_dir, fresh = imported
  _, params = checkpoint.load_sslax_checkpoint(sslax_dir)
  expected = list(FRESH_HEAD[type(model).__name__])
  mask_emb = model.state_dict().get(_base_prefix(model) + "masked_spec_embed")
  if mask_emb is None:
    expected.append("mask_emb")
  else:
    np.testing.assert_array_equal(params["mask_emb"], mask_emb.numpy())
  assert fresh == sorted(expected)


def _base_prefix(model):
  return "wav2vec2." if isinstance(model, transformers.Wav2Vec2ForPreTraining) else ""


def test_export_reloads_in_transformers_bitwise(imported, tmp_path, capsys):
  name, model, sslax_dir, _ = imported
  out_dir = str(tmp_path / "exported")
  hf.main(["export", "--from", sslax_dir, "--to", out_dir])
  # HuBERT's pretraining head has no place in a HubertModel: left out, and said so.
  hubert = isinstance(model, transformers.HubertModel)
  left_out = ", ".join(FRESH_HEAD[hf_families.HUBERT]) if hubert else "nothing"
  assert f"left out: {left_out}" in capsys.readouterr().out
  reload_class = transformers.HubertModel if hubert else transformers.Wav2Vec2ForPreTraining
  reloaded, info = reload_class.from_pretrained(out_dir, output_loading_info=True)
  assert not any(info.values()), info
  reloaded.eval()
  original = model.state_dict()
  prefix = _base_prefix(model)
  exported = {
    k.removeprefix("wav2vec2.") if not prefix else k: v for k, v in reloaded.state_dict().items()
  }
  for key, value in original.items():
    assert torch.equal(exported[key], value), key
  audio_BxS, _ = hf_models.padded_noise(LENGTHS)
  before = _hf_outputs(model, audio_BxS)
  after = _hf_outputs(reloaded, audio_BxS)
  for i, (x, y) in enumerate(zip(before["hidden"], after["hidden"], strict=True)):
    assert np.max(np.abs(x - y)) <= 1e-6, f"{name} hidden state {i}"
  for key in set(before) & {"projected", "targets"}:
    assert np.max(np.abs(before[key] - after[key])) <= 1e-6, f"{name} {key}"


def test_sslax_checkpoint_round_trip_and_identity_projection(tmp_path):
  # configs/demo.py:tiny has conv width == embed_dim, so no post_extract_proj: export writes
  # an identity projection (exact) and import accepts exactly that.
  model_config = demo.get_config("tiny").model
  params = model_types.init_params(model_config, seed=1)
  checkpoint.save_sslax_checkpoint(str(tmp_path / "a"), model_config, params)
  loaded_config, loaded = checkpoint.load_sslax_checkpoint(str(tmp_path / "a"))
  assert loaded_config.to_dict() == model_config.to_dict()
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  hf.main(["export", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "hf")])
  _, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(
    str(tmp_path / "hf"), output_loading_info=True
  )
  assert not any(info.values()), info
  hf.main(["import", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "b")])
  reimported_config, reimported = checkpoint.load_sslax_checkpoint(str(tmp_path / "b"))
  assert set(reimported_config.keys()) == set(common.wav2vec2_model().keys())
  for key in ("conv_layers", "embed_dim", "num_layers", "final_dim", "latent_vars"):
    assert reimported_config[key] == model_config[key], key
  jax.tree.map(np.testing.assert_array_equal, reimported, params)

  hf_config, tensors = hf_state_dict.read_hf_checkpoint(str(tmp_path / "hf"))
  tensors["wav2vec2.feature_projection.projection.bias"] += 1.0
  with pytest.raises(ValueError, match="feature_projection.projection is not the identity"):
    hf_state_dict.variables_from_hf(tensors, hf_config_fields.model_config_from_hf(hf_config))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
  model = _hf_model(*VARIANTS["group-postln-pretraining"])
  hf_dir = str(tmp_path_factory.mktemp("hf_base"))
  model.save_pretrained(hf_dir)
  return model, hf_dir


def test_pytorch_bin_and_legacy_weight_norm_names(base_checkpoint, tmp_path, monkeypatch):
  model, hf_dir = base_checkpoint
  _, reference = hf_state_dict.read_hf_checkpoint(hf_dir)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), bin_dir)
  legacy = {
    k.replace("parametrizations.weight.original0", "weight_g").replace(
      "parametrizations.weight.original1", "weight_v"
    ): v
    for k, v in model.state_dict().items()
  }
  assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in legacy
  torch.save(legacy, bin_dir / "pytorch_model.bin")
  _, tensors = hf_state_dict.read_hf_checkpoint(str(bin_dir))
  assert tensors.keys() == reference.keys()
  for key, value in reference.items():
    np.testing.assert_array_equal(tensors[key], value, err_msg=key)

  # Without torch, safetensors still reads and pytorch_model.bin says what it needs.
  monkeypatch.setitem(sys.modules, "torch", None)
  hf_state_dict.read_hf_checkpoint(hf_dir)
  with pytest.raises(ImportError, match="needs torch"):
    hf_state_dict.read_hf_checkpoint(str(bin_dir))


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("feat_extract_norm", "batch", "feat_extract_norm"),
    ("feat_extract_activation", "relu", "feat_extract_activation"),
    ("hidden_act", "gelu_new", "hidden_act"),
    ("layer_norm_eps", 1e-6, "layer_norm_eps"),
    ("add_adapter", True, "add_adapter"),
    ("adapter_attn_dim", 16, "adapter_attn_dim"),
    ("conv_stride", [5, 2, 2], "conv_stride"),
    ("position_embeddings_type", "rotary", "position_embeddings_type"),
    ("model_type", "wavlm", "model_type"),
    ("model_type", "hubert", "Wav2Vec2ForPreTraining is not supported for model_type 'hubert'"),
    ("architectures", ["Wav2Vec2ForSequenceClassification"], "Wav2Vec2ForSequenceClassification"),
    ("architectures", [hf_families.PRETRAINING, hf_families.CTC], "name different models"),
    ("architectures", ["Wav2Vec2ForXVector"], "Wav2Vec2ForXVector"),
    ("num_codevector_groups", 3, "num_codevector_groups"),
  ],
)
def test_unsupported_options_are_named(base_checkpoint, key, value, match):
  _, hf_dir = base_checkpoint
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_config = json.load(f)
  hf_config_fields.model_config_from_hf(hf_config)
  hf_config[key] = value
  with pytest.raises(ValueError, match=match):
    hf_config_fields.model_config_from_hf(hf_config)


_Q_PROJ = "wav2vec2.encoder.layers.0.attention.q_proj.weight"


@pytest.mark.parametrize(
  "edit, match",
  [
    (lambda t: t.update({"lm_head.weight": np.zeros((32, 48), np.float32)}), "lm_head.weight"),
    (lambda t: t.pop("project_q.bias"), "project_q.bias"),
    (
      lambda t: t.update({"quantizer.codevectors": np.zeros((1, 32, 4), np.float32)}),
      "quantizer.codevectors",
    ),
    (
      lambda t: t.update({_Q_PROJ: np.zeros((40, 48), np.float32)}),
      _Q_PROJ,
    ),
  ],
  ids=["unexpected", "missing", "shape", "attention-shape"],
)
def test_bad_tensors_are_named(base_checkpoint, edit, match):
  _, hf_dir = base_checkpoint
  hf_config, tensors = hf_state_dict.read_hf_checkpoint(hf_dir)
  edit(tensors)
  with pytest.raises(ValueError, match=match):
    hf_state_dict.variables_from_hf(tensors, hf_config_fields.model_config_from_hf(hf_config))


def _hf_num_params(**fields):
  with torch.device("meta"):
    model = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**fields))
  return sum(p.numel() for p in model.parameters())


def _sslax_num_params(model_config):
  return sum(int(np.prod(shape)) for shape in model_types.param_shapes(model_config).values())


def test_parameter_counts_equal_transformers():
  base = w2v_base.get_config().model
  large = w2v_large.get_config().model
  # facebook/wav2vec2-base and facebook/wav2vec2-large-lv60, built locally.
  assert _hf_num_params() == _sslax_num_params(base) == 95_044_608
  large_fields = dict(**hf_models.LARGE_ENCODER, **hf_models.LARGE_QUANTIZER)
  assert _hf_num_params(**large_fields) == _sslax_num_params(large) == 317_390_592
  # And export writes those architectures.
  for model_config, fields in ((base, {}), (large, large_fields)):
    exported = hf_config_fields.hf_config_from_model(model_config)
    reference = transformers.Wav2Vec2Config(**fields).to_dict()
    for key in ARCHITECTURE_KEYS:
      assert np.array_equal(exported[key], reference[key]), key
