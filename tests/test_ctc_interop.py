"""CTC export and import (sslax.interop.hf) against transformers' `Wav2Vec2ForCTC` and
`Wav2Vec2Processor`, end to end from a fine-tuning workdir.

A tiny fine-tuning run (`python -m sslax.main --config=configs/demo_ctc.py:tiny`, 8 steps,
one subprocess for the module) is exported with `python -m sslax.interop.hf export`;
transformers loads the directory with `Wav2Vec2Processor.from_pretrained` and
`Wav2Vec2ForCTC.from_pretrained` and runs real demo-corpus audio (the first utterances of
the test split). The model has a group-norm extractor, so transformers runs each utterance
alone (its group norm would normalise over padding) while sslax runs padded batches, as
its evaluate job does.

Logits must agree within ATOL = 1e-4 absolute (float32; logits are O(1)) on every valid
frame and the best path (argmax per frame) exactly. Transcripts: sslax's greedy decoding
(sslax/evaluate.py) drops `<s>`, `</s>`, `<unk>` after merging repeats and collapses
spaces, transformers' `batch_decode` keeps them as text. The 8-step model emits those
tokens (its head has never been trained away from them), so for it the test checks that
relation exactly; a copy whose head never picks them (their biases lowered by 100, as a
trained model's never does) must give `batch_decode` transcripts identical to
`evaluate.evaluate_params`'s.
"""

import json
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_models  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
from streams import take
import torch  # noqa: E402
import transformers  # noqa: E402
import xla_flags

from configs import common, demo_ctc  # noqa: E402
from sslax import (
  describe,  # noqa: E402
  evaluate,  # noqa: E402
  init_from,  # noqa: E402
)
from sslax.core import (
  sharding,  # noqa: E402
  text,  # noqa: E402
)
from sslax.data import labelled  # noqa: E402
from sslax.interop import hf, hf_config_fields, hf_families, hf_processor  # noqa: E402
from sslax.registry import checkpoint, model_types  # noqa: E402
from sslax.train import ctc_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4
SPLIT = "test[:12]"
# Special tokens transformers' decoding keeps as text and sslax's drops.
_KEPT_BY_HF = re.compile("|".join(re.escape(t) for t in text.SPECIALS[1:]))


@pytest.fixture(scope="module")
def finetuned(demo_data_dir, tmp_path_factory):
  """(fine-tuning workdir, its config): the tiny CTC run, as a user runs it."""
  workdir = str(tmp_path_factory.mktemp("ctc_workdir"))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.main",
      "--config=configs/demo_ctc.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={demo_data_dir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, XLA_FLAGS=xla_flags.cpu_devices(1)),  # one CPU device, as a user's machine
  )
  if result.returncode != 0:
    raise AssertionError(f"sslax.main failed:\n{result.stderr[-5000:]}")
  config = demo_ctc.get_config("tiny")
  config.unlock()
  config.data.data_dir = demo_data_dir
  return workdir, config


@pytest.fixture(scope="module")
def exported(finetuned, tmp_path_factory):
  """The transformers directory `export` writes from the workdir."""
  workdir, _ = finetuned
  hf_dir = str(tmp_path_factory.mktemp("hf_ctc"))
  hf.main(["export", "--from", workdir, "--to", hf_dir])
  return hf_dir


def _load_hf(hf_dir):
  processor = transformers.Wav2Vec2Processor.from_pretrained(hf_dir)
  model, info = transformers.Wav2Vec2ForCTC.from_pretrained(hf_dir, output_loading_info=True)
  assert not any(info.values()), info
  return processor, model.eval()


def _utterances(config):
  """[(example index, f32[S] waveform)] of SPLIT, as the evaluate job reads it."""
  eval_set = labelled.EvalSet(config.data, SPLIT, 4, process_index=0, process_count=1)
  found = []
  for batch, examples in take(eval_set.batches(), eval_set.num_batches):
    for row, index in enumerate(examples):
      if index >= 0:
        found.append((int(index), batch["audio"][row][batch["audio_paddings"][row] == 0]))
  return found


def _hf_logits(processor, model, samples):
  inputs = processor(samples, sampling_rate=16_000, return_tensors="pt")
  with torch.no_grad():
    return model(inputs.input_values).logits[0].numpy()


def test_export_writes_a_processor_and_model_transformers_load(finetuned, exported):
  workdir, _ = finetuned
  for name in ("config.json", "model.safetensors", *hf_processor.FILES):
    assert os.path.exists(os.path.join(exported, name)), name
  processor, model = _load_hf(exported)
  # The workdir's vocabulary is where checkpoint.read_workdir looks for it.
  assert checkpoint.VOCAB_FILE == ctc_step.VOCAB_FILE
  vocab = text.Vocabulary.load(os.path.join(workdir, ctc_step.VOCAB_FILE))
  tokenizer = processor.tokenizer
  assert isinstance(tokenizer, transformers.Wav2Vec2CTCTokenizer)
  assert tokenizer.get_vocab() == dict(vocab.index)
  # The CTC blank is transformers' pad token, index 0 as in sslax; `|` separates words.
  assert model.config.pad_token_id == tokenizer.pad_token_id == text.BLANK_ID
  assert tokenizer.word_delimiter_token == text.WORD_DELIMITER
  # Repeats merge unless a blank separates them. Two word delimiters with only blanks
  # between them: transformers keeps both spaces, sslax collapses them.
  a, t, space = (vocab.index[token] for token in ("A", "T", text.WORD_DELIMITER))
  path = [a, a, 0, a, space, 0, t]
  assert tokenizer.decode(path) == vocab.decode(text.collapse(path)) == "AA T"
  assert tokenizer.decode(path[:5] + [0] + path[4:]) == "AA  T"
  assert vocab.decode(text.collapse(path[:5] + [0] + path[4:])) == "AA T"
  assert model.config.vocab_size == len(vocab) == 32
  extractor = processor.feature_extractor
  assert extractor.sampling_rate == 16_000 and not extractor.do_normalize
  assert not extractor.return_attention_mask  # group-norm extractor: transformers' convention


def test_logits_and_greedy_transcripts_match_sslax(finetuned, exported, tmp_path):
  workdir, config = finetuned
  loaded = checkpoint.read_workdir(workdir)
  processor, model = _load_hf(exported)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  sslax_model = model_types.build_model(loaded.model_config)
  utterances = _utterances(config)
  audio_BxS = np.zeros((len(utterances), max(len(s) for _, s in utterances)), np.float32)
  paddings_BxS = np.ones_like(audio_BxS)
  for b, (_, samples) in enumerate(utterances):
    audio_BxS[b, : len(samples)] = samples
    paddings_BxS[b, : len(samples)] = 0.0
  logits_BxFxV, frame_paddings_BxF = jax.jit(
    lambda p: sslax_model.apply({"params": p}, audio_BxS, paddings_BxS, train=False)
  )(loaded.params)
  diffs, with_specials = [], 0
  for b, (_, samples) in enumerate(utterances):
    frames = int(np.sum(1.0 - np.asarray(frame_paddings_BxF[b])))
    ours_FxV = np.asarray(logits_BxFxV[b, :frames])
    theirs_FxV = _hf_logits(processor, model, samples)
    diffs.append(float(np.max(np.abs(ours_FxV - theirs_FxV))))
    best_F = np.argmax(theirs_FxV, axis=-1)
    np.testing.assert_array_equal(best_F, np.argmax(ours_FxV, axis=-1), err_msg=f"row {b}")
    decoded = processor.batch_decode(best_F[None])[0]
    with_specials += bool(_KEPT_BY_HF.search(decoded))
    without = re.sub(r"\s+", " ", _KEPT_BY_HF.sub("", decoded)).strip()
    assert without == loaded.vocab.decode(text.collapse(best_F)), b
  print(f"max |logit difference| {max(diffs):.1e} over {len(utterances)} utterances")
  print(f"{with_specials} transformers transcripts hold <s>, </s> or <unk>")
  assert max(diffs) <= ATOL, diffs

  # The same model with `<s>`, `</s>`, `<unk>` never best, exported from an sslax
  # checkpoint directory: transformers' transcripts are sslax's evaluate job's.
  params = jax.tree.map(np.array, loaded.params)
  params["lm_head"]["bias"][1 : len(text.SPECIALS)] -= 100.0
  sslax_dir, hf_dir = str(tmp_path / "sslax"), str(tmp_path / "hf")
  checkpoint.save_sslax_checkpoint(sslax_dir, loaded.model_config, params, vocab=loaded.vocab)
  hf.main(["export", "--from", sslax_dir, "--to", hf_dir, "--normalize", "false"])
  processor, model = _load_hf(hf_dir)
  results = evaluate.evaluate_params(config, {"params": params}, loaded.vocab, SPLIT, mesh)
  hypotheses = [u["hypothesis"] for u in results["utterances"]]
  decoded = [
    processor.batch_decode(np.argmax(_hf_logits(processor, model, samples), -1)[None])[0]
    for _, samples in utterances
  ]
  assert decoded == [hypotheses[index] for index, _ in utterances]
  assert all(decoded) and " " in "".join(decoded)  # words, not empty strings


def test_import_round_trip_and_init_from(finetuned, exported, tmp_path, capsys):
  workdir, _ = finetuned
  original = checkpoint.read_workdir(workdir)
  sslax_dir = str(tmp_path / "imported")
  hf.main(["import", "--from", exported, "--to", sslax_dir])
  printed = capsys.readouterr().out
  assert "initialised afresh: nothing" in printed
  assert "--config.data.normalize=false" in printed
  imported = checkpoint.read_sslax_checkpoint(sslax_dir)
  assert model_types.model_type(imported.model_config) == "ctc"
  assert imported.model_config.to_dict() == dict(
    original.model_config.to_dict(), feature_grad_mult=0.0
  )
  assert imported.vocab == original.vocab
  jax.tree.map(np.testing.assert_array_equal, imported.params, original.params)

  # Back to transformers: the same bytes of every tensor, the same tokenizer files.
  with pytest.raises(ValueError, match="normalize=None"):
    hf.main(["export", "--from", sslax_dir, "--to", str(tmp_path / "no")])
  again = str(tmp_path / "again")
  hf.main(["export", "--from", sslax_dir, "--to", again, "--normalize", "false"])
  first = safetensors.numpy.load_file(os.path.join(exported, "model.safetensors"))
  second = safetensors.numpy.load_file(os.path.join(again, "model.safetensors"))
  assert first.keys() == second.keys()
  for name, value in first.items():
    np.testing.assert_array_equal(second[name], value, err_msg=name)
  for name in hf_processor.FILES:
    with open(os.path.join(exported, name)) as a, open(os.path.join(again, name)) as b:
      assert json.load(a) == json.load(b), name

  # A fine-tuning run can start from the transformers directory (lm_head included).
  source = init_from.load_source(f"hf:{exported}")
  loaded, fresh, vocab = source.params, source.fresh, source.vocab
  assert fresh == [] and vocab == original.vocab
  np.testing.assert_array_equal(loaded["lm_head/kernel"], original.params["lm_head"]["kernel"])


def _edited_copy(exported, tmp_path, file, edit):
  path = tmp_path / "edited"
  shutil.copytree(exported, path)
  with open(path / file) as f:
    content = json.load(f)
  edit(content)
  with open(path / file, "w") as f:
    json.dump(content, f)
  return str(path)


@pytest.mark.parametrize(
  "file, edit, match",
  [
    ("config.json", lambda c: c.update(pad_token_id=4), "pad_token_id=4"),
    ("config.json", lambda c: c.update(hidden_act="relu"), "hidden_act"),
    ("vocab.json", lambda v: v.update({"|": 31, "Q": 4}), "a vocabulary starts with"),
    ("vocab.json", lambda v: v.update({"<pad>": {"eng": 0}}), "nested"),
    ("tokenizer_config.json", lambda t: t.update(word_delimiter_token="_"), "word_delimiter"),
    ("tokenizer_config.json", lambda t: t.update(do_lower_case=True), "do_lower_case"),
  ],
  ids=["blank", "activation", "layout", "nested", "delimiter", "lower-case"],
)
def test_unsupported_ctc_checkpoints_are_named(exported, tmp_path, file, edit, match):
  with pytest.raises(ValueError, match=match):
    hf.read_hf(_edited_copy(exported, tmp_path, file, edit))


def test_export_refuses_what_a_ctc_export_cannot_hold():
  ctc_model = common.ctc_model(common.wav2vec2_model(), vocab_size=32)
  assert hf_config_fields.hf_config_from_model(ctc_model)["architectures"] == [hf_families.CTC]
  conformer = common.ctc_model(common.wav2vec2_model(encoder="conformer"), vocab_size=32)
  assert hf_config_fields.hf_config_from_model(conformer)["architectures"] == [
    hf_families.CONFORMER_CTC
  ]
  for field, value in (("frontend", "logmel"), ("conformer_conv_norm", "layer_norm")):
    model = common.ctc_model(
      common.wav2vec2_model(encoder="conformer", **{field: value}), vocab_size=32
    )
    with pytest.raises(ValueError, match=f"{field}='{value}' has no transformers"):
      hf_config_fields.hf_config_from_model(model)
  with pytest.raises(ValueError, match="vocab missing"):
    hf.export_hf("/nonexistent", ctc_model, {}, normalize=False)


def _hf_ctc_num_params(**fields):
  with torch.device("meta"):
    model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**fields))
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("vocab_size", [32, 40])
def test_describe_counts_fine_tuning_configs_as_transformers(vocab_size):
  """`sslax.describe` on the CTC configs, the vocabulary given: facebook/wav2vec2-base-960h's
  and wav2vec2-large-960h-lv60-self's architectures, built by transformers on no memory."""
  for name, fields in (("ctc_base_10m", {}), ("ctc_large_960h", hf_models.LARGE_ENCODER)):
    path = os.path.join(REPO, "configs", f"{name}.py")
    config = describe.with_vocabulary(describe.load_config(path), vocab_size)
    expected = _hf_ctc_num_params(vocab_size=vocab_size, **fields)
    assert describe.parameter_counts(config)["total"] == expected, name
