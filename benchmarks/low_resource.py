"""The low-resource experiment: does pretraining pay off when labels are few?

  python benchmarks/low_resource.py --workdir=/tmp/sslax-lowres

1. Pretrains the demo wav2vec 2.0 (configs/demo.py, longer than the 10-minute demo:
   `--pretrain_steps`, about an hour on 2 CPU cores) in WORKDIR/pretrain, or reuses
   `--pretrain_workdir`: a configs/demo.py workdir, or an sslax checkpoint directory such
   as the one benchmarks/pretrain_demo_numpy.py writes on a GPU machine without
   TensorFlow. A rerun resumes the pretraining.
2. For each labelled-minutes value and seed, fine-tunes configs/demo_ctc.py twice with the
   same model, data subset and budget: from the pretrained checkpoint, and from random
   initialisation (fully trainable: the feature encoder trains too, and there is no frozen
   phase, which only helps a pretrained Transformer). Each run is `python -m sslax.main`
   in its own workdir, so reruns skip finished runs and resume killed ones.
   Both arms keep only the first `--keep_layers` Transformer layers (the pretrained arm's
   upper layers are dropped): the top layers of a contrastively pretrained model
   specialise in the pretext task (Pasad et al., 2021, "Layer-wise analysis of a
   self-supervised speech representation model"), and on the demo model the whole 4-layer
   stack fine-tuned worse than scratch while layer 2's features probed best
   (benchmarks/RESULTS.md). Each arm has its learning rate, chosen on the dev split.
3. Scores every run on the test split (voices never heard in training) with the evaluate
   job and writes WORKDIR/results.json and a Markdown table, WORKDIR/results.md:
   CER and WER per run, mean per arm, and the relative CER reduction.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Where every run and the results go.")
_PRETRAIN_WORKDIR = flags.DEFINE_string(
  "pretrain_workdir",
  None,
  "Reuse this configs/demo.py workdir or sslax checkpoint directory instead of pretraining.",
)
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 3000, "Pretraining updates.")
_MINUTES = flags.DEFINE_list("labelled_minutes", ["10"], "Labelled minutes per experiment.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Fine-tuning seeds per arm.")
_KEEP_LAYERS = flags.DEFINE_integer(
  "keep_layers", 2, "Transformer layers both arms keep (0: all the pretrained model has)."
)
_PRETRAINED_LR = flags.DEFINE_float("pretrained_lr", 5e-4, "Peak learning rate, pretrained arm.")
_SCRATCH_LR = flags.DEFINE_float("scratch_lr", 1e-3, "Peak learning rate, scratch arm.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' for the default).")
flags.mark_flags_as_required(["workdir"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sslax_main(config: str, workdir: str, *overrides: str) -> float:
  """Runs `python -m sslax.main`; returns its wall time in seconds."""
  command = [sys.executable, "-m", "sslax.main", f"--config={config}", f"--workdir={workdir}"]
  command += [f"--config.data.data_dir={_DATA_DIR.value}", *overrides]
  print("+", " ".join(command), flush=True)
  start = time.time()
  subprocess.run(command, cwd=REPO, check=True)
  return time.time() - start


def pretrain(workdir: str) -> str:
  """The pretraining workdir (trained, or resumed to completion)."""
  if _PRETRAIN_WORKDIR.value:
    return _PRETRAIN_WORKDIR.value
  path = os.path.join(workdir, "pretrain")
  steps = _PRETRAIN_STEPS.value
  sslax_main(
    "configs/demo.py",
    path,
    f"--config.total_steps={steps}",
    f"--config.optim.warmup_steps={steps // 10}",
    f"--config.checkpoint_every={max(steps // 12, 1)}",
    "--config.gumbel.decay=0.999",  # reaches the end temperature at about 1,400 steps
  )
  return path


def finetune_and_score(run_dir: str, minutes: str, seed: str, init_from: str | None) -> dict:
  overrides = [f"--config.seed={seed}", f"--config.data.labelled_minutes={minutes}"]
  if _KEEP_LAYERS.value:
    overrides.append(f"--config.model.num_layers={_KEEP_LAYERS.value}")
  if init_from:
    overrides += [
      f"--config.init_from={init_from}",
      f"--config.optim.learning_rate={_PRETRAINED_LR.value}",
    ]
  else:
    overrides += [
      f"--config.optim.learning_rate={_SCRATCH_LR.value}",
      "--config.optim.freeze_finetune_updates=0",
      "--config.model.feature_grad_mult=1.0",
    ]
  seconds = sslax_main("configs/demo_ctc.py", run_dir, *overrides)
  sslax_main("configs/demo_ctc.py", run_dir, *overrides, "--config.job=evaluate")
  with open(os.path.join(run_dir, "eval_test.json")) as f:
    scores = json.load(f)
  return {"cer": scores["cer"], "wer": scores["wer"], "finetune_seconds": round(seconds)}


def mean(values: list[float]) -> float:
  return sum(values) / len(values)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  pretrained = pretrain(workdir)
  runs = []
  for minutes in _MINUTES.value:
    for seed in _SEEDS.value:
      for arm, init_from in (("pretrained", pretrained), ("scratch", None)):
        run_dir = os.path.join(workdir, f"{arm}_{minutes}min_seed{seed}")
        scores = finetune_and_score(run_dir, minutes, seed, init_from)
        runs.append({"arm": arm, "labelled_minutes": float(minutes), "seed": int(seed), **scores})

  summary = []
  for minutes in _MINUTES.value:
    cer = {
      arm: mean(
        [r["cer"] for r in runs if r["arm"] == arm and r["labelled_minutes"] == float(minutes)]
      )
      for arm in ("pretrained", "scratch")
    }
    summary.append(
      {
        "labelled_minutes": float(minutes),
        "cer_pretrained": cer["pretrained"],
        "cer_scratch": cer["scratch"],
        "relative_cer_reduction": 1 - cer["pretrained"] / cer["scratch"],
      }
    )
  results = {"pretrain_workdir": pretrained, "runs": runs, "summary": summary}
  with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
    json.dump(results, f, indent=1)
  os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))

  lines = [
    "| arm | labelled min | seed | CER | WER | fine-tune wall time |",
    "|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['arm']} | {r['labelled_minutes']:g} | {r['seed']} | {r['cer']:.3f} | {r['wer']:.3f} "
    f"| {r['finetune_seconds']} s |"
    for r in runs
  ]
  lines += ["", "| labelled min | CER pretrained | CER scratch | relative CER reduction |"]
  lines += ["|---|---|---|---|"]
  lines += [
    f"| {s['labelled_minutes']:g} | {s['cer_pretrained']:.3f} | {s['cer_scratch']:.3f} "
    f"| {s['relative_cer_reduction']:.1%} |"
    for s in summary
  ]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
