"""Conformer interop (sslax.interop.hf) against transformers' `Wav2Vec2Conformer*` models.

Small random transformers models (hidden 32, conv 16, 2 conformer blocks, depthwise kernel
7, every parameter perturbed and batch-norm running statistics moved off (0, 1), so every
tensor of the map counts), saved, imported with the command line and run on the same 3
utterances (24, 17 and 10 frames):

  'relative-layer-pretraining': relative positions, layer-norm extractor with conv bias,
    Wav2Vec2ConformerForPreTraining (its quantizer and heads are wav2vec 2.0's, compared
    numerically in tests/test_interop_hf.py; here they round-trip bitwise);
  'rotary-group-model': rotary positions, group-norm extractor, Wav2Vec2ConformerModel.

Padding: sslax runs the utterances as one padded batch (sslax.extract: paddings, i.e.
transformers' attention mask, and the checkpoint's running statistics); transformers runs
each utterance alone, unpadded, because on a padded batch its conformer convolution reads
the padded frames (and a group-norm extractor normalises over them), so its answer for an
utterance depends on what it is batched with. The utterance alone is the answer both
should give. Every hidden state (transformers `output_hidden_states`, the last one after
the encoder's final LayerNorm, i.e. `last_hidden_state`) must agree within ATOL = 1e-4
absolute in float32 on each utterance's frames.

Export then reload in transformers gives back every tensor bitwise (the running statistics
included) and the same outputs bitwise. A `Wav2Vec2ConformerForCTC` (relative positions,
layer-norm extractor) imports with its vocabulary, its logits within ATOL of transformers'
on each utterance, and exports back bitwise. Options sslax's conformer lacks are errors naming
them.
"""

import contextlib
import io
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_models  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import common, demo_conformer, w2v_conformer_large  # noqa: E402
from sslax import extract  # noqa: E402
from sslax.core import (
  checkpoints,  # noqa: E402
  text,  # noqa: E402
  workdirs,  # noqa: E402
)
from sslax.core import state as state_lib  # noqa: E402
from sslax.interop import (  # noqa: E402
  hf,
  hf_config_fields,
  hf_families,
  hf_processor,
  hf_state_dict,
)
from sslax.registry import checkpoint, model_types  # noqa: E402

ATOL = 1e-4
LENGTHS = (8000, 5600, 3300)  # samples: 24, 17 and 10 frames
SMALL = dict(
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=48,
  conv_dim=(16,) * 7,
  conv_depthwise_kernel_size=7,
  num_conv_pos_embeddings=16,
  num_conv_pos_embedding_groups=4,
  hidden_act="swish",
  num_codevectors_per_group=8,
  codevector_dim=16,
  proj_codevector_dim=12,
)
# name: (position_embeddings_type, feat_extract_norm, conv_bias, architecture)
VARIANTS = {
  "relative-layer-pretraining": ("relative", "layer", True, hf_families.CONFORMER_PRETRAINING),
  "rotary-group-model": ("rotary", "group", False, hf_families.CONFORMER_MODEL),
}
# What import initialises afresh from a bare Wav2Vec2ConformerModel.
FRESH_HEAD = [
  "final_proj/bias",
  "final_proj/kernel",
  "project_q/bias",
  "project_q/kernel",
  "quantizer/codevectors",
  "quantizer/logits/bias",
  "quantizer/logits/kernel",
]


def _hf_model(position_embeddings, norm, conv_bias, architecture, seed=0):
  config = transformers.Wav2Vec2ConformerConfig(
    **SMALL,
    position_embeddings_type=position_embeddings,
    feat_extract_norm=norm,
    conv_bias=conv_bias,
  )
  torch.manual_seed(seed)
  return hf_models.perturbed(getattr(transformers, architecture)(config).eval())


def _base(model):
  pretraining = isinstance(model, transformers.Wav2Vec2ConformerForPreTraining)
  return model.wav2vec2_conformer if pretraining else model


def _hf_hidden_states(model, audio_1xS):
  """transformers' hidden states, the last after the encoder's final LayerNorm."""
  with torch.no_grad():
    out = _base(model)(torch.from_numpy(audio_1xS), output_hidden_states=True)
  hidden = [h.numpy() for h in out.hidden_states]
  hidden[-1] = out.last_hidden_state.numpy()
  return hidden


def _hf_outputs(model, audio_1xS):
  """Hidden states and, of a pretraining model, the head outputs."""
  result = {"hidden": _hf_hidden_states(model, audio_1xS)}
  if _base(model) is not model:
    with torch.no_grad():
      head = model(torch.from_numpy(audio_1xS))
    result["projected"] = head.projected_states.numpy()
    result["targets"] = head.projected_quantized_states.numpy()
  return result


@pytest.fixture(scope="module")
def importer(tmp_path_factory):
  """name -> (name, transformers model, its directory, the sslax checkpoint directory,
  what the import command printed), each variant imported once per module."""
  imports = {}

  def get(name):
    if name not in imports:
      model = _hf_model(*VARIANTS[name])
      hf_dir = str(tmp_path_factory.mktemp("hf_conformer"))
      model.save_pretrained(hf_dir)
      sslax_dir = str(tmp_path_factory.mktemp("sslax_conformer"))
      printed = io.StringIO()
      with contextlib.redirect_stdout(printed):
        hf.main(["import", "--from", hf_dir, "--to", sslax_dir])
      imports[name] = name, model, hf_dir, sslax_dir, printed.getvalue()
    return imports[name]

  return get


@pytest.fixture(params=list(VARIANTS))
def imported(request, importer):
  return importer(request.param)


def test_hidden_states_match_transformers(imported):
  """Through sslax.extract: the utterances run as one padded batch with the running
  statistics of the checkpoint's model state."""
  name, model, _, sslax_dir, _ = imported
  loaded = checkpoint.read_sslax_checkpoint(sslax_dir)
  assert loaded.model_config.encoder == "conformer"
  audio_BxS, _ = hf_models.padded_noise(LENGTHS)
  utterances = [audio_BxS[b, :n] for b, n in enumerate(LENGTHS)]
  layers = list(range(SMALL["num_hidden_layers"] + 1))
  with pytest.raises(ValueError, match="pass model_state"):
    extract.extract(
      loaded.model_config, loaded.params, utterances, layers, batch_size=3, pad_multiple=1600
    )
  ours = extract.extract(
    loaded.model_config,
    loaded.params,
    utterances,
    layers,
    batch_size=len(LENGTHS),
    pad_multiple=1600,
    model_state=loaded.model_state,
  )
  for b, samples in enumerate(utterances):
    theirs = _hf_hidden_states(model, samples[None])
    diffs = [np.max(np.abs(ours[b][i] - t[0])) for i, t in enumerate(theirs)]
    print(name, f"utterance {b}:", [f"{d:.1e}" for d in diffs])
    assert max(diffs) <= ATOL, (name, b, diffs)


def test_import_takes_the_running_statistics_and_names_what_is_fresh(imported):
  _, model, _, sslax_dir, printed = imported
  loaded = checkpoint.read_sslax_checkpoint(sslax_dir)
  bare = isinstance(model, transformers.Wav2Vec2ConformerModel)
  assert f"initialised afresh: {', '.join(FRESH_HEAD) if bare else 'nothing'}" in printed
  state = model.state_dict()
  prefix = "" if bare else "wav2vec2_conformer."
  for i in range(SMALL["num_hidden_layers"]):
    stats = loaded.model_state["batch_stats"]["encoder"][f"layers_{i}"]["conv"]["batch_norm"]
    norm = f"{prefix}encoder.layers.{i}.conv_module.batch_norm"
    np.testing.assert_array_equal(stats["mean"], state[f"{norm}.running_mean"].numpy())
    np.testing.assert_array_equal(stats["var"], state[f"{norm}.running_var"].numpy())


def test_export_reloads_in_transformers_bitwise(imported, tmp_path, capsys):
  name, model, _, sslax_dir, _ = imported
  out_dir = str(tmp_path / "exported")
  hf.main(["export", "--from", sslax_dir, "--to", out_dir])
  assert "left out: nothing" in capsys.readouterr().out
  reloaded, info = transformers.Wav2Vec2ConformerForPreTraining.from_pretrained(
    out_dir, output_loading_info=True
  )
  assert not any(info.values()), info
  reloaded.eval()
  exported = reloaded.state_dict()
  if isinstance(model, transformers.Wav2Vec2ConformerModel):
    exported = {k.removeprefix("wav2vec2_conformer."): v for k, v in exported.items()}
  for key, value in model.state_dict().items():
    if "pos_conv_embed" in key or key.endswith("num_batches_tracked"):
      continue  # never used by transformers; written as a zero convolution and 0
    assert torch.equal(exported[key], value), (name, key)
  pos_conv = next(v for k, v in exported.items() if k.endswith("pos_conv_embed.conv.bias"))
  assert not torch.any(pos_conv)
  audio_BxS, _ = hf_models.padded_noise(LENGTHS)
  before = _hf_outputs(model, audio_BxS)
  after = _hf_outputs(reloaded, audio_BxS)
  for i, (x, y) in enumerate(zip(before["hidden"], after["hidden"], strict=True)):
    np.testing.assert_array_equal(x, y, err_msg=f"{name} hidden state {i}")
  for key in set(before) & {"projected", "targets"}:
    np.testing.assert_array_equal(before[key], after[key], err_msg=f"{name} {key}")


def test_export_from_a_training_workdir_takes_its_batch_statistics(importer, tmp_path, capsys):
  """A conformer pretraining workdir (its train state holds the statistics in
  `model_state`) exports with them (the full-architecture variant)."""
  name, model, _, sslax_dir, _ = importer("relative-layer-pretraining")
  loaded = checkpoint.read_sslax_checkpoint(sslax_dir)
  config = demo_conformer.get_config("w2v,tiny")
  config.unlock()
  config.model = loaded.model_config
  workdir = str(tmp_path / "workdir")
  workdirs.write_config(config, workdir)
  state = state_lib.TrainState(
    step=np.int32(7), params=loaded.params, opt_state={}, model_state=loaded.model_state
  )
  checkpointer = checkpoints.Checkpointer(workdir, keep=1)
  checkpointer.save(7, state, {"position": 0})
  checkpointer.wait()
  checkpointer.close()
  hf_dir = str(tmp_path / "hf")
  hf.main(["export", "--from", workdir, "--to", hf_dir])
  assert "left out: nothing" in capsys.readouterr().out
  reloaded = transformers.Wav2Vec2ConformerForPreTraining.from_pretrained(hf_dir)
  exported = reloaded.state_dict()
  for key, value in model.state_dict().items():
    if "pos_conv_embed" not in key and not key.endswith("num_batches_tracked"):
      assert torch.equal(exported[key], value), key
  with open(os.path.join(hf_dir, "preprocessor_config.json")) as f:
    assert json.load(f)["do_normalize"] == config.data.normalize


def test_a_ctc_conformer_imports_at_parity_and_exports_bitwise(tmp_path, capsys):
  """transformers' `Wav2Vec2ConformerForCTC` (a fine-tuned conformer, as
  facebook/wav2vec2-conformer-rel-pos-large-960h-ft) imports with its vocabulary and running
  statistics: logits within ATOL of transformers' on each utterance; the import exports back
  bitwise, as a fine-tuned sslax conformer exports."""
  vocab = text.Vocabulary((*text.SPECIALS, text.WORD_DELIMITER, *"ABCDEFG"))
  config = transformers.Wav2Vec2ConformerConfig(
    **SMALL,
    position_embeddings_type="relative",
    feat_extract_norm="layer",
    conv_bias=True,
    vocab_size=len(vocab),
    pad_token_id=text.BLANK_ID,
  )
  torch.manual_seed(0)
  model = hf_models.perturbed(transformers.Wav2Vec2ConformerForCTC(config).eval())
  hf_dir, sslax_dir = str(tmp_path / "hf"), str(tmp_path / "sslax")
  model.save_pretrained(hf_dir)
  hf_processor.write_processor(hf_dir, vocab, normalize=False, layer_norm=True)
  hf.main(["import", "--from", hf_dir, "--to", sslax_dir])
  assert "initialised afresh: nothing" in capsys.readouterr().out
  loaded = checkpoint.read_sslax_checkpoint(sslax_dir)
  assert model_types.model_type(loaded.model_config) == "ctc"
  assert loaded.model_config.encoder == "conformer" and loaded.vocab == vocab
  ours_model = model_types.build_model(loaded.model_config)
  audio_BxS, _ = hf_models.padded_noise(LENGTHS)
  for b, n in enumerate(LENGTHS):
    audio_1xS = audio_BxS[b : b + 1, :n]
    ours, _ = ours_model.apply(loaded.variables(), audio_1xS, np.zeros_like(audio_1xS), train=False)
    with torch.no_grad():
      theirs = model(torch.from_numpy(audio_1xS)).logits.numpy()
    assert ours.shape == theirs.shape
    difference = np.max(np.abs(np.asarray(ours) - theirs))
    print(f"utterance {b}: max |logit difference| {difference:.1e}")
    assert difference <= ATOL, (b, difference)

  out_dir = str(tmp_path / "exported")
  hf.main(["export", "--from", sslax_dir, "--to", out_dir, "--normalize", "false"])
  assert "left out: nothing" in capsys.readouterr().out
  reloaded, info = transformers.Wav2Vec2ConformerForCTC.from_pretrained(
    out_dir, output_loading_info=True
  )
  assert not any(info.values()), info
  exported = reloaded.state_dict()
  for key, value in model.state_dict().items():
    if "pos_conv_embed" not in key and not key.endswith("num_batches_tracked"):
      assert torch.equal(exported[key], value), key
  assert transformers.Wav2Vec2Processor.from_pretrained(out_dir).tokenizer.get_vocab() == dict(
    vocab.index
  )


@pytest.fixture(scope="module")
def hf_config():
  return transformers.Wav2Vec2ConformerConfig(**SMALL).to_dict()


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("position_embeddings_type", None, "position_embeddings_type=None"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("conv_depthwise_kernel_size", 8, "conv_depthwise_kernel_size=8"),
    ("add_adapter", True, "add_adapter"),
    (
      "architectures",
      ["Wav2Vec2ConformerForSequenceClassification"],
      "Wav2Vec2ConformerForSequenceClassification",
    ),
  ],
)
def test_unsupported_conformer_options_are_named(hf_config, key, value, match):
  assert hf_config_fields.model_config_from_hf(hf_config).encoder == "conformer"
  with pytest.raises(ValueError, match=match):
    hf_config_fields.model_config_from_hf(dict(hf_config, **{key: value}))
  rotary = dict(hf_config, position_embeddings_type="rotary")
  assert hf_config_fields.model_config_from_hf(rotary).conformer_position_embeddings == "rotary"
  with pytest.raises(ValueError, match="rotary_embedding_base=500"):
    hf_config_fields.model_config_from_hf(dict(rotary, rotary_embedding_base=500))


def test_bad_conformer_tensors_are_named(imported):
  name, _, hf_dir, _, _ = imported
  hf_config, tensors = hf_state_dict.read_hf_checkpoint(hf_dir)
  model_config = hf_config_fields.model_config_from_hf(hf_config)
  prefix = "wav2vec2_conformer." if name == "relative-layer-pretraining" else ""
  missing = dict(tensors)
  del missing[f"{prefix}encoder.layers.1.conv_module.batch_norm.running_var"]
  with pytest.raises(ValueError, match=r"missing: \[.*layers.1.conv_module.batch_norm.running_var"):
    hf_state_dict.variables_from_hf(missing, model_config)
  if model_config.conformer_position_embeddings == "rotary":
    inv_freq = f"{prefix}encoder.embed_positions.inv_freq"
    wrong = dict(tensors, **{inv_freq: 2 * tensors[inv_freq]})
    with pytest.raises(ValueError, match="inv_freq is not what sslax computes"):
      hf_state_dict.variables_from_hf(wrong, model_config)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("conformer_conv_norm", "layer_norm", "conformer_conv_norm='layer_norm' has no transformers"),
    ("frontend", "logmel", "frontend='logmel' has no transformers"),
  ],
)
def test_export_refuses_conformers_transformers_cannot_hold(field, value, match):
  model_config = common.wav2vec2_model(encoder="conformer", **{field: value})
  with pytest.raises(ValueError, match=match):
    hf_config_fields.hf_config_from_model(model_config)


def test_export_writes_the_conformer_large_architecture():
  """configs/w2v_conformer_large.py exports as facebook/wav2vec2-conformer-rel-pos-large."""
  exported = hf_config_fields.hf_config_from_model(w2v_conformer_large.get_config().model)
  reference = transformers.Wav2Vec2ConformerConfig(
    **hf_models.LARGE_ENCODER,
    **hf_models.LARGE_QUANTIZER,
    hidden_act="swish",
    position_embeddings_type="relative",
  ).to_dict()
  assert exported["model_type"] == reference["model_type"] == "wav2vec2-conformer"
  assert exported["architectures"] == [hf_families.CONFORMER_PRETRAINING]
  for key in (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "position_embeddings_type",
    "conv_depthwise_kernel_size",
    "rotary_embedding_base",
    "codevector_dim",
    "proj_codevector_dim",
    "num_codevectors_per_group",
    "num_codevector_groups",
  ):
    assert np.array_equal(exported[key], reference[key]), key
  json.dumps(exported)  # config.json-ready
