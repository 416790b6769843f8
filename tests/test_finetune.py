"""The fine-tuning step and jobs: frozen parameters, sharding, learning, and the fine-tune
and evaluate jobs end to end (a subprocess each, as a user runs them)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.traverse_util
import jax
import jiwer
import ml_collections
import numpy as np
import pytest
from streams import take
import tiny_steps
import xla_flags

from configs import demo, demo_ctc
from sslax import evaluate, init_from
from sslax.core import checkpoints, sharding, text
from sslax.core import state as state_lib
from sslax.data import labelled
from sslax.registry import checkpoint
from sslax.train import ctc_decode, ctc_step, wav2vec2_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREEZE = 3


def flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


@pytest.fixture(scope="module")
def tiny(demo_data_dir):
  """A tiny fine-tuning config (no dropout or layerdrop, so runs compare), its vocabulary,
  one batch and a single-device trainer; one block and 3 conv layers (tests/tiny_steps.py:
  compiles faster)."""
  config = tiny_steps.fewer_layers(demo_ctc.get_config("tiny"))
  config.unlock()
  config.data.data_dir = demo_data_dir
  config.total_steps = 300
  config.optim.learning_rate = 1e-2
  config.optim.freeze_finetune_updates = FREEZE
  config.model.update(layerdrop=0.0, activation_dropout=0.0)
  data = config.data
  _, transcripts = labelled.split_transcripts(
    data.name, data.split, data.data_dir, data.text_key, data.id_key
  )
  vocab = text.Vocabulary.build(transcripts)
  stream = labelled.FinetuningStream(
    data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    vocab,
    channels=config.model.embed_dim,
    seed=0,
    process_index=0,
    process_count=1,
  )
  ((batch, _),) = take(stream.batches(), 1)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  trainer = ctc_step.build_trainer(config, mesh, len(vocab))
  return config, vocab, batch, mesh, trainer


def run_steps(trainer, mesh, batch, state, steps):
  """Applies `steps` updates on one batch; returns (state, per-step host metrics)."""
  history = []
  with sharding.activate(mesh):
    global_batch = sharding.global_batch(batch, mesh)
    for _ in range(steps):
      state, metrics = trainer.step(state, global_batch, jax.random.key(1))
      history.append(jax.device_get(metrics))
  return state, history


def test_frontend_never_trains_and_the_transformer_waits(tiny):
  _, _, batch, mesh, trainer = tiny
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  initial = flat(state.params)
  for step in range(1, FREEZE + 3):
    state, _ = run_steps(trainer, mesh, batch, state, 1)
    params = flat(state.params)
    for path, value in params.items():
      name = path.split("/")[0]
      if name == ctc_step.FRONTEND or (name != ctc_step.HEAD and step <= FREEZE):
        np.testing.assert_array_equal(value, initial[path], err_msg=f"{path} at step {step}")
    assert not np.array_equal(params["lm_head/kernel"], initial["lm_head/kernel"])
  # After the freeze the whole Transformer side trains.
  for prefix in ("encoder/layers_0/attention", "encoder/pos_conv", "feature_norm", "mask_emb"):
    changed = [not np.array_equal(v, initial[p]) for p, v in params.items() if p.startswith(prefix)]
    assert changed and all(changed), prefix


def test_a_positive_feature_grad_mult_trains_the_frontend_after_the_freeze(tiny):
  config, vocab, batch, mesh, _ = tiny
  config = config.copy_and_resolve_references()
  config.model.feature_grad_mult = 1.0
  trainer = ctc_step.build_trainer(config, mesh, len(vocab))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  initial = flat(state.params)
  state, _ = run_steps(trainer, mesh, batch, state, FREEZE)
  frozen = flat(state.params)
  state, _ = run_steps(trainer, mesh, batch, state, 1)
  trained = flat(state.params)
  frontend = [path for path in initial if path.startswith(ctc_step.FRONTEND + "/")]
  assert frontend
  for path in frontend:
    np.testing.assert_array_equal(frozen[path], initial[path], err_msg=path)
    assert not np.array_equal(trained[path], initial[path]), path


def test_a_negative_feature_grad_mult_is_an_error(tiny):
  config, vocab, _, _, _ = tiny
  config = config.copy_and_resolve_references()
  config.model.feature_grad_mult = -0.1
  with pytest.raises(ValueError, match="feature_grad_mult=-0.1"):
    ctc_step.build_model(config, len(vocab))


def test_a_batch_norm_conformer_fine_tunes_with_its_running_statistics(tiny, tmp_path):
  """A conformer with batch norm in its convolution modules (the default) fine-tunes: its
  running statistics move at every update, in the freeze phase too (fairseq's encoder runs
  in training mode there, under no_grad); decoding normalises with them; and
  `config.init_from` loads them with the parameters."""
  config, vocab, batch, mesh, _ = tiny
  config = config.copy_and_resolve_references()
  config.model.encoder = "conformer"
  assert config.model.conformer_conv_norm == "batch_norm"
  trainer = ctc_step.build_trainer(config, mesh, len(vocab))
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  history = [flat(state.model_state)]
  assert history[0] and all(path.startswith("batch_stats/") for path in history[0])
  for _ in range(FREEZE + 1):
    state, _ = run_steps(trainer, mesh, batch, state, 1)
    history.append(flat(state.model_state))
  for step, (before, after) in enumerate(zip(history, history[1:], strict=False), 1):
    for path, value in before.items():
      assert not np.array_equal(after[path], value), f"{path} unchanged by update {step}"
  # From the initial unit variance, momentum 0.1: 0.9 * 1 + 0.1 * (a variance >= 0).
  variances = [v for path, v in history[1].items() if path.endswith("/var")]
  assert variances and all(np.all(v >= 0.9 - 1e-6) for v in variances)

  # Decoding normalises with the running statistics: other statistics, other outputs.
  decode = ctc_decode.make_decode_fn(
    trainer.model, state_lib.variables(trainer.state_shardings), mesh
  )
  variables = state_lib.variables(state)
  shifted = dict(variables, batch_stats=jax.tree.map(lambda x: x + 3.0, variables["batch_stats"]))
  with sharding.activate(mesh):
    global_batch = sharding.global_batch(batch, mesh)
    best, _ = jax.device_get(decode(variables, global_batch))
    best_shifted, _ = jax.device_get(decode(shifted, global_batch))
  assert not np.array_equal(best, best_shifted)
  with pytest.raises(ValueError, match="batch_stats"):
    evaluate.evaluate_params(config, {"params": state.params}, vocab, "train", mesh)

  # A run initialised from a checkpoint of this model starts from its statistics.
  source = str(tmp_path / "ctc_conformer")
  host = jax.device_get(state)
  model_config = ml_collections.ConfigDict(dict(config.model.to_dict(), vocab_size=len(vocab)))
  checkpoint.save_sslax_checkpoint(source, model_config, host.params, host.model_state, vocab)
  fresh = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(1))
  loaded, newly_initialised = init_from.initial_state(fresh, trainer.state_shardings, source, vocab)
  assert newly_initialised == []
  for name in ("params", "model_state"):
    expected, got = flat(getattr(host, name)), flat(getattr(loaded, name))
    assert expected.keys() == got.keys()
    for path, value in expected.items():
      np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_both_phases_run_on_eight_devices_when_loaded_from_the_compilation_cache(tiny):
  """The head-only and the full update, sharded over 8 devices, compiled by one trainer
  and loaded from the suite's persistent compilation cache by a second (as a resumed run
  or another process would): both run, with the same results. One program holding both
  phases under a `lax.cond` deadlocked here (XLA:CPU, see `ctc_step.PhasedStep`)."""
  _, vocab, batch, _, _ = tiny
  config = demo_ctc.get_config("tiny")  # with its dropout and layerdrop
  assert jax.config.jax_compilation_cache_dir  # tests/conftest.py sets one for the suite
  batch8 = {name: np.concatenate([value, value]) for name, value in batch.items()}
  mesh8 = sharding.make_mesh(dict(data=8, fsdp=1, tensor=1))
  histories = []
  for _ in range(2):
    trainer = ctc_step.build_trainer(config, mesh8, len(vocab))
    state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
    steps = config.optim.freeze_finetune_updates + 1  # both phases
    histories.append(run_steps(trainer, mesh8, batch8, state, steps)[1])
  for first, again in zip(*histories, strict=True):
    assert first == again


def test_sharded_step_equals_single_device(tiny):
  config, vocab, batch, mesh, trainer = tiny
  # Batch shards over data and fsdp. (With tensor > 1 as well, the positional conv's
  # weight gradient comes out wrong, in pretraining too: a bug outside this job.)
  mesh4 = sharding.make_mesh(dict(data=2, fsdp=2, tensor=1), jax.devices()[:4])
  trainer4 = ctc_step.build_trainer(config, mesh4, len(vocab))
  initial = jax.device_get(
    state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  )
  results = []
  for t, m in ((trainer, mesh), (trainer4, mesh4)):
    state = jax.device_put(initial, t.state_shardings)
    # One update in the freeze, then one of the whole model (state.step past the freeze).
    state, frozen_metrics = run_steps(t, m, batch, state, 1)
    after_frozen = flat(state.params)
    state = state.replace(step=jax.device_put(np.int32(FREEZE), state.step.sharding))
    _, full_metrics = run_steps(t, m, batch, state, 1)
    results.append((frozen_metrics[0], after_frozen, full_metrics[0]))
  (frozen1, after1, full1), (frozen4, after4, full4) = results
  for path, value in after1.items():
    # float32 reductions in another order: within 1e-6 after an update of size ~1e-4.
    np.testing.assert_allclose(after4[path], value, atol=1e-6, err_msg=path)
  for one, eight in ((frozen1, frozen4), (full1, full4)):
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(eight["grad_norm"], one["grad_norm"], rtol=1e-4)
  assert full1["grad_norm"] > frozen1["grad_norm"]  # the Transformer's gradient joins


def test_tiny_model_learns_to_transcribe_a_fixed_batch(tiny):
  """Loss falls and greedy CER on the batch drops from ~1 to near 0 (masks off)."""
  _, vocab, batch, mesh, trainer = tiny
  batch = dict(batch, mask=np.zeros_like(batch["mask"]))
  batch["channel_mask"] = np.zeros_like(batch["channel_mask"])
  references = [
    vocab.decode(labels[paddings == 0])
    for labels, paddings in zip(batch["labels"], batch["label_paddings"], strict=True)
  ]

  def cer(params):
    decode = ctc_decode.make_decode_fn(
      trainer.model, {"params": trainer.state_shardings.params}, mesh
    )
    with sharding.activate(mesh):
      best, frames = jax.device_get(decode({"params": params}, sharding.global_batch(batch, mesh)))
    hypotheses = [vocab.decode(text.collapse(b[:n])) for b, n in zip(best, frames, strict=True)]
    return jiwer.cer(references, hypotheses)

  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  assert cer(state.params) > 0.9
  with sharding.activate(mesh):  # 300 updates: compiled for speed
    args = state, sharding.global_batch(batch, mesh), jax.random.key(1)
    phases = [
      xla_flags.optimized(phase, *args) for phase in (trainer.step.head_only, trainer.step.full)
    ]
  step = ctc_step.PhasedStep(*phases, trainer.step.freeze)
  state, history = run_steps(dataclasses.replace(trainer, step=step), mesh, batch, state, 300)
  losses = [m["loss"] / m["utterances"] for m in history]
  assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
  assert cer(state.params) < 0.3


# ---- The jobs, end to end ------------------------------------------------------------


def run_main(workdir, data_dir, *overrides, env=None, tensorflow=True):
  """`python -m sslax.main ...` of the one-block tiny model; without `tensorflow`, as on a
  machine that lacks it."""
  result = subprocess.run(
    [
      sys.executable,
      *(["-m"] if tensorflow else [os.path.join(REPO, "tests", "without_tensorflow.py")]),
      "sslax.main",
      "--config=configs/demo_ctc.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      *tiny_steps.FEWER_LAYERS_FLAGS,
      *overrides,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  if result.returncode != 0:
    raise AssertionError(f"sslax.main failed:\n{result.stderr[-5000:]}")
  return result


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_finetune_from_a_pretraining_run_resume_and_evaluate(tmp_path, demo_data_dir):
  # A pretraining workdir (a tiny model's initial state, checkpointed as the loop does).
  # One block and 3 conv layers (tests/tiny_steps.py): the four runs compile their own
  # programs (one device, their own cache).
  pretrain_dir = str(tmp_path / "pretrain")
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  trainer = wav2vec2_step.build_trainer(config, mesh)
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(7))
  checkpointer = checkpoints.Checkpointer(pretrain_dir, keep=1)
  checkpointer.save(0, state, {"position": 0})
  checkpointer.wait()
  checkpointer.close()
  pretrained = flat(state.params)

  # The resumed run recompiles the same program: a compilation cache saves the time.
  # One CPU device, as a user's machine has (not the 8 fake ones of the tests).
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags.cpu_devices(1),
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  workdir = str(tmp_path / "finetune")
  run = [
    "--config.total_steps=8",
    "--config.checkpoint_every=4",
    f"--config.init_from={pretrain_dir}",
  ]
  result = run_main(workdir, demo_data_dir, *run, env=env)
  assert "newly initialised: ['lm_head/bias', 'lm_head/kernel']" in result.stderr
  assert "step 8/8 | loss" in result.stderr
  vocab = text.Vocabulary.load(os.path.join(workdir, "vocab.json"))
  assert len(vocab) == 32  # specials, '|', 26 letters and the apostrophe
  reference = read_metrics(workdir)
  assert [m["step"] for m in reference] == list(range(1, 9))
  assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in reference)
  # Loaded, then frozen: at step 4 (= freeze_finetune_updates) only lm_head has moved;
  # the frontend never moves.
  pretraining_only = ("quantizer", "project_q", "final_proj")
  shared = {path for path in pretrained if path.split("/")[0] not in pretraining_only}
  frontend = {path for path in shared if path.startswith("frontend/")}
  for step, fixed in ((4, shared), (8, frontend)):
    params = flat(checkpoints.load_params(workdir, step))
    assert set(params) == shared | {"lm_head/kernel", "lm_head/bias"}
    for path in fixed:
      np.testing.assert_array_equal(params[path], pretrained[path], err_msg=f"{path} at {step}")
  assert not np.array_equal(
    params["encoder/layers_0/fc1/kernel"], pretrained["encoder/layers_0/fc1/kernel"]
  )

  # Resume: drop the last checkpoint and run the same command again (on a machine without
  # TensorFlow: the data is prepared).
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  result = run_main(workdir, demo_data_dir, *run, env=env, tensorflow=False)
  assert "resumed from checkpoint 4" in result.stderr
  assert "vocabulary of 32 tokens from" in result.stderr
  resumed = read_metrics(workdir)
  assert [m["step"] for m in resumed] == list(range(1, 9))
  for a, b in zip(resumed, reference, strict=True):
    # Same program, same inputs, same device: bitwise equal.
    assert a["loss"] == b["loss"] and a["data_position"] == b["data_position"], a["step"]

  # Evaluate on the test split, without TensorFlow too.
  run_main(
    workdir,
    demo_data_dir,
    "--config.job=evaluate",
    "--config.eval.split=test",
    env=env,
    tensorflow=False,
  )
  with open(os.path.join(workdir, "eval_test.json")) as f:
    results = json.load(f)
  ids, transcripts = labelled.split_transcripts(
    "sslax_demo_corpus", "test", demo_data_dir, "text", "id"
  )
  assert results["checkpoint_step"] == 8 and results["dataset"] == "sslax_demo_corpus:test"
  assert results["normalization"] == text.NORMALIZATION
  utterances = results["utterances"]
  assert [u["id"] for u in utterances] == list(ids)
  assert [u["reference"] for u in utterances] == [text.normalize(t) for t in transcripts]
  references = [u["reference"] for u in utterances]
  hypotheses = [u["hypothesis"] for u in utterances]
  assert results["wer"] == pytest.approx(jiwer.wer(references, hypotheses))
  assert results["cer"] == pytest.approx(jiwer.cer(references, hypotheses))
  assert results["words"]["reference"] == sum(len(r.split()) for r in references)

  # A new run from this fine-tuned one, with a vocabulary of another order, one character
  # fewer and one unknown to the source: lm_head's columns follow the tokens.
  source_vocab = text.Vocabulary.load(os.path.join(workdir, "vocab.json"))
  fixed = len(text.SPECIALS) + 1  # the special tokens and '|'
  refit_vocab = text.Vocabulary(
    (*source_vocab.tokens[:fixed], *reversed(source_vocab.tokens[fixed + 1 :]), "é")
  )
  refit = str(tmp_path / "refit")
  os.makedirs(refit)
  refit_vocab.save(os.path.join(refit, "vocab.json"))
  result = run_main(
    refit,
    demo_data_dir,
    f"--config.init_from={workdir}",
    "--config.total_steps=4",
    "--config.optim.learning_rate=1e-6",  # Adam moves each value at most ~4e-6
    env=env,
  )
  dropped = source_vocab.tokens[fixed]
  assert f"{len(refit_vocab) - 1} of {len(refit_vocab)} from the source" in result.stderr
  assert f"fresh for ['é'], the source's [{dropped!r}] dropped" in result.stderr
  source_head = flat(checkpoints.load_params(workdir, 8))
  refit_head = flat(checkpoints.load_params(refit, 4))
  for i, token in enumerate(refit_vocab.tokens[:-1]):
    j = source_vocab.index[token]
    for path in ("lm_head/kernel", "lm_head/bias"):
      np.testing.assert_allclose(
        refit_head[path][..., i], source_head[path][..., j], atol=1e-4, err_msg=token
      )


def test_evaluate_names_what_is_missing(tmp_path):
  config = demo_ctc.get_config("tiny")
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    evaluate.evaluate(config, str(tmp_path))
  text.Vocabulary.build(["A B"]).save(str(tmp_path / "vocab.json"))
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    evaluate.evaluate(config, str(tmp_path))
