"""The low-resource experiment: does pretraining pay off when labels are few?

  python benchmarks/low_resource.py --workdir=/tmp/sslax-lowres

Every choice is made by a stated rule on the dev split (voices that neither pretraining
nor fine-tuning hears), never by hand:

1. Pretraining: configs/demo.py for `--pretrain_steps` updates in WORKDIR/pretrain (the
   demo's recipe, run longer), or `--pretrain_workdir` (a configs/demo.py workdir or an
   sslax checkpoint directory, e.g. from a GPU machine). A rerun resumes it.
2. Layers kept. The top layers of a contrastively pretrained model specialise in the
   pretext task (Pasad et al., 2021, "Layer-wise analysis of a self-supervised speech
   representation model"; on an earlier demo model the whole stack fine-tuned worse than
   scratch, benchmarks/RESULTS.md). Rule: keep the Transformer layers up to the hidden
   state whose k-means units (K=100, fitted on train) score the highest PNMI on dev, at
   least one (a CTC head on the Transformer's input would see 25 ms of audio per frame).
   The k-means job makes that choice (`config.layer_choice`, sslax/units/layer_choice.py)
   in WORKDIR/layer_choice. Both arms keep the same layers, so they have the same model.
3. Learning rate per arm: each of `--pretrained_lrs` / `--scratch_lrs` fine-tunes the
   first labelled-minutes value with the first seed; the lowest dev CER wins (ties: the
   lower rate) and every other run of that arm uses it.
4. Runs: both arms for every seed at the first labelled-minutes value, and for the first
   seed at the others. Pretrained: `init_from` the checkpoint (frozen feature encoder and
   a head-only phase, fairseq's recipe, as configs/demo_ctc.py sets). Scratch: random
   initialisation, fully trainable (the feature encoder trains, no frozen phase, which
   only helps a pretrained Transformer). Each is `python -m sslax.main` in its own
   workdir, validated on dev during training; the evaluate job scores its best checkpoint
   by dev WER (fairseq's checkpoint_best) on dev and test; reruns skip finished runs.
5. WORKDIR/results.json, a Markdown table WORKDIR/results.md (CER and WER per run, mean per
   arm, relative CER reduction) and WORKDIR/cer_vs_minutes.png (test CER against labelled
   minutes per arm, every seed a point).

The demo corpus's train split holds 31 minutes of utterances up to 7 s (configs/demo_ctc.py's
crop), so labelled-minutes values above that are refused by the fine-tuning job.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags
import matplotlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ when run as `python benchmarks/low_resource.py`

from configs import demo_ctc  # noqa: E402
from sslax.core import workdirs  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Where every run and the results go.")
_PRETRAIN_WORKDIR = flags.DEFINE_string(
  "pretrain_workdir",
  None,
  "Reuse this configs/demo.py workdir or sslax checkpoint directory instead of pretraining.",
)
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 2000, "Pretraining updates.")
_MINUTES = flags.DEFINE_list(
  "labelled_minutes", ["10", "20", "30"], "Labelled minutes; all seeds run at the first."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds (the first elsewhere).")
_PRETRAINED_LRS = flags.DEFINE_list(
  "pretrained_lrs", ["2.5e-4", "5e-4", "1e-3"], "Peak learning rates tried, pretrained arm."
)
_SCRATCH_LRS = flags.DEFINE_list(
  "scratch_lrs", ["5e-4", "1e-3", "2e-3"], "Peak learning rates tried, scratch arm."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' for the default).")
flags.mark_flags_as_required(["workdir"])

ARMS = ("pretrained", "scratch")


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
    f"--config.checkpoint_every={max(steps // 4, 1)}",
    f"--config.valid.every={max(steps // 4, 1)}",
  )
  return path


def layers_to_keep(workdir: str, pretrained: str) -> tuple[int, dict]:
  """Step 2 of the module docstring: (layers kept, the k-means job's layer_choice.json)."""
  num_layers = demo_ctc.get_config().model.num_layers
  choice_dir = os.path.join(workdir, "layer_choice")
  sslax_main(
    "configs/kmeans_hubert.py:demo",
    choice_dir,
    f"--config.features.checkpoint={pretrained}",
    f"--config.layer_choice.layers={tuple(range(num_layers + 1))}",
  )
  with open(os.path.join(choice_dir, "units", "layer_choice.json")) as f:
    record = json.load(f)
  return max(record["layer"], 1), record


def run_dir(workdir: str, arm: str, minutes: str, seed: str, lr: float) -> str:
  return os.path.join(workdir, f"{arm}_{minutes}min_seed{seed}_lr{lr:g}")


def finetune_and_score(path, arm, minutes, seed, lr, keep_layers, pretrained) -> dict:
  """Fine-tunes one run (or finds it finished) and scores it on dev and test."""
  overrides = [
    f"--config.seed={seed}",
    f"--config.data.labelled_minutes={minutes}",
    f"--config.model.num_layers={keep_layers}",
    f"--config.optim.learning_rate={lr:g}",
  ]
  if arm == "pretrained":
    overrides.append(f"--config.init_from={pretrained}")
  else:
    overrides += [
      "--config.optim.freeze_finetune_updates=0",
      "--config.model.feature_grad_mult=1.0",
    ]
  seconds = sslax_main("configs/demo_ctc.py", path, *overrides)
  scores = {}
  for split in ("dev", "test"):
    result = os.path.join(path, f"eval_{split}.json")
    if not os.path.exists(result):
      # The run's config.json gives the data and model; its best checkpoint by dev WER.
      sslax_main(
        "configs/demo_ctc.py", path, "--config.job=evaluate", f"--config.eval.split={split}"
      )
    with open(result) as f:
      scores[split] = json.load(f)
  return dict(
    arm=arm,
    labelled_minutes=float(minutes),
    seed=int(seed),
    learning_rate=lr,
    dev_cer=scores["dev"]["cer"],
    cer=scores["test"]["cer"],
    wer=scores["test"]["wer"],
    finetune_seconds=round(seconds),
  )


def best_learning_rate(trials: list[dict]) -> float:
  """The learning rate of the lowest dev CER; ties go to the lower rate."""
  return min(trials, key=lambda run: (run["dev_cer"], run["learning_rate"]))["learning_rate"]


def mean(values: list[float]) -> float:
  return sum(values) / len(values)


def plot(runs: list[dict], path: str) -> None:
  """Test CER against labelled minutes per arm: every run a point, the mean a line."""
  figure, axes = plt.subplots(figsize=(5, 3.5))
  for arm, colour in zip(ARMS, ("tab:blue", "tab:orange"), strict=True):
    mine = [r for r in runs if r["arm"] == arm]
    minutes = sorted({r["labelled_minutes"] for r in mine})
    axes.scatter([r["labelled_minutes"] for r in mine], [r["cer"] for r in mine], color=colour)
    means = [mean([r["cer"] for r in mine if r["labelled_minutes"] == m]) for m in minutes]
    axes.plot(minutes, means, color=colour, label=arm)
  axes.set_xlabel("labelled minutes")
  axes.set_ylabel("test CER")
  axes.legend()
  axes.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def write_results(workdir: str, results: dict) -> None:
  workdirs.write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
  runs = results["runs"]
  lines = [
    f"Layers kept: {results['keep_layers']} (layer choice: "
    + ", ".join(f"state {s['layer']} PNMI {s['pnmi']:.3f}" for s in results["layer_choice"])
    + ")",
    "",
    "| arm | labelled min | seed | lr | dev CER | test CER | test WER | fine-tune wall time |",
    "|---|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['arm']} | {r['labelled_minutes']:g} | {r['seed']} | {r['learning_rate']:g} "
    f"| {r['dev_cer']:.3f} | {r['cer']:.3f} | {r['wer']:.3f} | {r['finetune_seconds']} s |"
    for r in runs
  ]
  lines += ["", "| labelled min | CER pretrained | CER scratch | relative CER reduction |"]
  lines += ["|---|---|---|---|"]
  lines += [
    f"| {s['labelled_minutes']:g} | {s['cer_pretrained']:.3f} | {s['cer_scratch']:.3f} "
    f"| {s['relative_cer_reduction']:.1%} |"
    for s in results["summary"]
  ]
  workdirs.write_atomically(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
  print("\n".join(lines))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  pretrained = pretrain(workdir)
  keep_layers, choice = layers_to_keep(workdir, pretrained)
  first_minutes, first_seed = _MINUTES.value[0], _SEEDS.value[0]
  grids = dict(
    pretrained=[float(lr) for lr in _PRETRAINED_LRS.value],
    scratch=[float(lr) for lr in _SCRATCH_LRS.value],
  )

  # The arms' trials alternate (rate i of each arm in turn), so a run stopped early and
  # resumed later has comparable pairs first.
  lr_trials = []
  for index in range(max(len(grid) for grid in grids.values())):
    for arm in ARMS:
      if index < len(grids[arm]):
        lr = grids[arm][index]
        path = run_dir(workdir, arm, first_minutes, first_seed, lr)
        trial = finetune_and_score(
          path, arm, first_minutes, first_seed, lr, keep_layers, pretrained
        )
        lr_trials.append(trial)
  chosen = {arm: best_learning_rate([t for t in lr_trials if t["arm"] == arm]) for arm in ARMS}
  runs = [t for t in lr_trials if t["learning_rate"] == chosen[t["arm"]]]
  plan = [(first_minutes, seed) for seed in _SEEDS.value[1:]]
  plan += [(minutes, first_seed) for minutes in _MINUTES.value[1:]]
  for minutes, seed in plan:
    for arm in ARMS:
      lr = chosen[arm]
      path = run_dir(workdir, arm, minutes, seed, lr)
      runs.append(finetune_and_score(path, arm, minutes, seed, lr, keep_layers, pretrained))

  summary = []
  for minutes in _MINUTES.value:
    cer = {
      arm: mean(
        [r["cer"] for r in runs if r["arm"] == arm and r["labelled_minutes"] == float(minutes)]
      )
      for arm in ARMS
    }
    summary.append(
      dict(
        labelled_minutes=float(minutes),
        cer_pretrained=cer["pretrained"],
        cer_scratch=cer["scratch"],
        relative_cer_reduction=1 - cer["pretrained"] / cer["scratch"],
      )
    )
  results = dict(
    pretrain_workdir=pretrained,
    keep_layers=keep_layers,
    layer_choice=choice["scores"],
    learning_rates=chosen,
    learning_rate_trials=lr_trials,
    runs=runs,
    summary=summary,
  )
  write_results(workdir, results)
  plot(runs, os.path.join(workdir, "cer_vs_minutes.png"))


if __name__ == "__main__":
  app.run(main)
