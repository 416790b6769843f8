"""A scaling grid: held-out loss against training FLOPs for model sizes x training budgets.

  python benchmarks/scaling.py --workdir=/tmp/sslax-scaling \
    --sizes=width:0.5,width:1,width:2 --budgets=300,600,1200

Every size trains for every budget with `python -m sslax.main --config=CONFIG`, each run in
its own workdir WORKDIR/SIZE_BUDGETsteps (e.g. width2_600steps) with `total_steps` set to
the budget, so each run's learning-rate schedule (configs/demo.py: a 2-update warmup, then
linear decay to 0) ends at its budget, as in Hoffmann et al. 2022 ("Training
compute-optimal large language models"), not a longer run cut short. The Gumbel
temperature decays per update as the config says, whatever the budget. The demo model
spends its first ~150 updates on a plateau at chance (configs/demo.py), the 128-wide one
~40 more, so the default budgets start past it. Reruns skip finished runs and resume
stopped ones; a run directory is reused as it is, so another `--config` or `--override`
needs another `--workdir`.

Sizes (`--sizes`, comma-separated) scale `--config`'s model (default configs/demo.py,
237,504 parameters: a 32-channel feature encoder and a 4-layer, 64-wide Transformer):

- `width:M`: Transformer width `model.embed_dim` and feed-forward width `model.mlp_dim`
  times M, heads kept (so the head dimension scales too). embed_dim x M must be an integer
  that the heads and the positional convolution's groups divide.
- `depth:M`: `model.num_layers` times M (an integer result).

The feature encoder is not scaled: at the demo's 2 s crops it costs about as many FLOPs as
the demo's Transformer, so the smallest sizes' compute does not shrink with their width.

Per run: parameters and training FLOPs per update from `sslax.describe` (training FLOPs
per second of audio at the run's crop, `data.max_samples`, times the seconds of audio in
one update, `data.batch_size` crops), read from the run's own config.json, so `--override`s
of the data or model count; training FLOPs C = budget x FLOPs per update. Held-out loss:
the contrastive loss (nats per masked frame, K distractors; chance ln(K + 1)) and accuracy
of the validation after the last update (`config.valid`, on `--valid_split`, read from the
run's metrics.jsonl).

Each size is a family: its runs' losses L against compute C are fitted with a power law,
`--fit=power` L = a C^-b (least squares on log L against log C, at least 2 budgets) or
`--fit=offset` L = a C^-b + c (scipy's curve_fit, 0 <= c < min L: c is the fit's floor,
the loss the size would approach with unlimited updates on this data; at least 4 budgets,
since 3 points determine its 3 parameters exactly).

Writes WORKDIR/scaling.json (every run and fit), WORKDIR/scaling.md (a table: size,
parameters, updates, training FLOPs, held-out loss and accuracy; then the fits) and
WORKDIR/scaling.png (loss against training FLOPs, log x; points per run, the fitted curve
per size).

Any other dataset: `--override=data.name=NAME --override=data.data_dir=DIR` (each
`--override=FIELD=VALUE` becomes `--config.FIELD=VALUE` of every run), with a
`--valid_split` that dataset has.
"""

import json
import os
import subprocess
import sys

from absl import app, flags
import matplotlib
import ml_collections
import numpy as np
import scipy.optimize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# sslax and tools/ from this checkout when run as `python benchmarks/scaling.py`.
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

import plot_runs  # noqa: E402  (after the sys.path lines)

from sslax import describe  # noqa: E402
from sslax.core import workdirs  # noqa: E402
from sslax.registry import model_types  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCALINGS = {"width": ("embed_dim", "mlp_dim"), "depth": ("num_layers",)}
# Fewest budgets per size each fit takes: 2 determine a power law; 3 would fit the offset
# form's three parameters exactly, whatever the data, so it takes 4.
MIN_POINTS = {"power": 2, "offset": 4}


def size_overrides(model_config: ml_collections.ConfigDict, size: str) -> dict[str, int]:
  """The model fields of size `size` ('width:M' or 'depth:M', module docstring) as
  {'model.FIELD': value}.

  Raises:
    ValueError: the spec is malformed or its fields are not integers the model accepts.
  """
  kind, _, multiplier = size.partition(":")
  try:
    factor = float(multiplier)
  except ValueError:
    factor = 0.0
  if kind not in SCALINGS or factor <= 0:
    raise ValueError(f"--sizes: {size!r} is not width:M or depth:M with a positive M")
  fields = {}
  for field in SCALINGS[kind]:
    value = model_config[field] * factor
    if abs(value - round(value)) > 1e-9 * value:  # 100 x 1.1 is 110.00000000000001
      raise ValueError(f"--sizes: {size!r} makes model.{field} {value:g}, not an integer")
    fields[field] = round(value)
  if kind == "width":
    for divisor in ("num_heads", "pos_conv_groups"):
      if fields["embed_dim"] % model_config[divisor]:
        raise ValueError(
          f"--sizes: {size!r} makes model.embed_dim {fields['embed_dim']}, which "
          f"model.{divisor}={model_config[divisor]} does not divide"
        )
  return {f"model.{field}": value for field, value in fields.items()}


def run_name(size: str, budget: int) -> str:
  """The run's workdir name: 'width:0.5', 400 -> 'width0.5_400steps'."""
  return f"{size.replace(':', '')}_{budget}steps"


def held_out(path: str, budget: int) -> dict | None:
  """The validation line after update `budget` of the run in `path`, or None."""
  if not os.path.exists(os.path.join(path, "metrics.jsonl")):
    return None
  _, valid = plot_runs.read_metrics(path)
  return valid[-1] if valid and valid[-1]["step"] == budget else None


def run_cost(path: str) -> dict:
  """{'parameters', 'flops_per_update'} of the run in `path`, from its config.json."""
  with open(os.path.join(path, "config.json")) as f:
    run = json.load(f)
  config = ml_collections.ConfigDict(
    dict(model=model_types.model_config_from_json(run["model"]), data=run["data"])
  )
  seconds_per_update = config.data.batch_size * config.data.max_samples / describe.SAMPLE_RATE_HZ
  return dict(
    parameters=describe.parameter_counts(config)["total"],
    flops_per_update=describe.train_flops_per_audio_second(config) * seconds_per_update,
  )


def fit_power_law(compute: np.ndarray, loss: np.ndarray, form: str) -> dict[str, float]:
  """Fits L = a C^-b (form 'power') or L = a C^-b + c ('offset') to losses `loss` at
  training FLOPs `compute` (both [N]).

  Returns:
    {'a', 'b', 'c'} with C in FLOPs (c = 0 for 'power').

  Raises:
    ValueError: an unknown form, fewer than MIN_POINTS[form] points, or a non-positive
      compute or loss.
  """
  compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
  if form not in MIN_POINTS:
    raise ValueError(f"--fit={form!r}: expected one of {sorted(MIN_POINTS)}")
  if len(compute) < MIN_POINTS[form]:
    raise ValueError(
      f"--fit={form} needs at least {MIN_POINTS[form]} budgets per size, got {len(compute)}"
    )
  if (compute <= 0).any() or (loss <= 0).any():
    raise ValueError("a power law needs positive compute and loss")
  slope, intercept = np.polyfit(np.log(compute), np.log(loss), 1)
  if form == "power":
    return dict(a=float(np.exp(intercept)), b=float(-slope), c=0.0)
  # Compute relative to the smallest keeps a near 1 for the optimiser; a is converted back.
  scale = compute.min()

  def curve(x, a, b, c):
    return a * x ** (-b) + c

  (a, b, c), _ = scipy.optimize.curve_fit(
    curve,
    compute / scale,
    loss,
    p0=(loss.max() - 0.9 * loss.min(), max(-slope, 0.1), 0.9 * loss.min()),
    bounds=((0.0, 0.0, 0.0), (np.inf, np.inf, loss.min())),
    maxfev=100_000,
  )
  return dict(a=float(a * scale**b), b=float(b), c=float(c))


def power_law(compute: np.ndarray, fit: dict[str, float]) -> np.ndarray:
  """L(C) of a `fit_power_law` result."""
  return fit["a"] * np.asarray(compute, np.float64) ** (-fit["b"]) + fit["c"]


def plot(runs: list[dict], fits: dict[str, dict], path: str) -> None:
  """Held-out loss against training FLOPs (log x): each run a point, each size's fit a line."""
  figure, axes = plt.subplots(figsize=(6, 4))
  colours = plt.get_cmap("tab10").colors
  for index, (size, fit) in enumerate(fits.items()):
    mine = [r for r in runs if r["size"] == size]
    compute = np.array([r["training_flops"] for r in mine])
    colour = colours[index % len(colours)]
    axes.scatter(compute, [r["loss"] for r in mine], color=colour)
    grid = np.geomspace(compute.min(), compute.max(), 50)
    label = f"{size} ({mine[0]['parameters']:,} params): b = {fit['b']:.3f}"
    axes.plot(grid, power_law(grid, fit), color=colour, label=label)
  axes.set_xscale("log")
  # Labels at 2 and 5 times each power of ten: every minor label overlaps its neighbours.
  axes.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
  axes.set_xlabel("training FLOPs")
  axes.set_ylabel("held-out contrastive loss (nats)")
  axes.legend(fontsize=8)
  axes.grid(alpha=0.3, which="both")
  figure.tight_layout()
  figure.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def write_results(workdir: str, results: dict) -> None:
  """WORKDIR/scaling.json and the Markdown table WORKDIR/scaling.md, each written atomically."""
  workdirs.write_atomically(os.path.join(workdir, "scaling.json"), json.dumps(results, indent=1))
  form = "L = a C^-b" + (" + c" if results["fit"] == "offset" else "")
  lines = [
    "| size | parameters | updates | training FLOPs | held-out loss | held-out accuracy |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  lines += [
    f"| {r['size']} | {r['parameters']:,} | {r['updates']} | {r['training_flops']:.3g} "
    f"| {r['loss']:.4f} | {r['accuracy']:.3f} |"
    for r in results["runs"]
  ]
  lines += ["", f"Fits, {form} (C in FLOPs):", "", "| size | a | b | c |", "|---|---:|---:|---:|"]
  lines += [
    f"| {size} | {fit['a']:.4g} | {fit['b']:.4f} | {fit['c']:.4f} |"
    for size, fit in results["fits"].items()
  ]
  workdirs.write_atomically(os.path.join(workdir, "scaling.md"), "\n".join(lines) + "\n")
  print("\n".join(lines))


def train(config: str, path: str, overrides: dict) -> None:
  """Runs (or resumes) `python -m sslax.main` in `path` with `--config.FIELD=VALUE`s."""
  command = [sys.executable, "-m", "sslax.main", f"--config={config}", f"--workdir={path}"]
  command += [f"--config.{field}={value}" for field, value in overrides.items()]
  print("+", " ".join(command), flush=True)
  subprocess.run(command, cwd=REPO, check=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = flags.FLAGS
  # Absolute, since the runs start in the repository root.
  config_file, _, config_arg = options.config.partition(":")
  config = os.path.abspath(config_file) + (f":{config_arg}" if config_arg else "")
  model_config = describe.load_config(config).model
  try:
    budgets = [int(budget) for budget in options.budgets]
  except ValueError:
    raise app.UsageError(f"--budgets={','.join(options.budgets)}: not integers") from None
  if not budgets or min(budgets) <= 0:
    raise app.UsageError(f"--budgets={','.join(options.budgets)}: expected positive updates")
  if len(budgets) < MIN_POINTS[options.fit]:
    raise app.UsageError(
      f"--fit={options.fit} needs at least {MIN_POINTS[options.fit]} budgets, got {budgets}"
    )
  try:
    sizes = {size: size_overrides(model_config, size) for size in options.sizes}
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  extra = {}
  for override in options.override:
    field, equals, value = override.partition("=")
    if not equals:
      raise app.UsageError(f"--override={override!r}: expected FIELD=VALUE")
    extra[field] = value

  os.makedirs(options.workdir, exist_ok=True)
  runs = []
  for size, fields in sizes.items():
    for budget in budgets:
      path = os.path.join(options.workdir, run_name(size, budget))
      if held_out(path, budget) is None:
        train(
          config,
          path,
          {
            **extra,
            **fields,
            "total_steps": budget,
            "valid.split": options.valid_split,
            "valid.every": budget,
          },
        )
      valid = held_out(path, budget)
      if valid is None:
        raise RuntimeError(
          f"{path}/metrics.jsonl has no validation after update {budget}; delete {path} "
          "to train that run again"
        )
      cost = run_cost(path)
      runs.append(
        dict(
          size=size,
          updates=budget,
          parameters=cost["parameters"],
          flops_per_update=cost["flops_per_update"],
          training_flops=budget * cost["flops_per_update"],
          loss=valid["contrastive_loss"],
          accuracy=valid["accuracy"],
          workdir=path,
        )
      )
  fits = {
    size: fit_power_law(
      [r["training_flops"] for r in runs if r["size"] == size],
      [r["loss"] for r in runs if r["size"] == size],
      options.fit,
    )
    for size in sizes
  }
  results = dict(config=options.config, fit=options.fit, runs=runs, fits=fits)
  write_results(options.workdir, results)
  plot(runs, fits, os.path.join(options.workdir, "scaling.png"))


if __name__ == "__main__":
  # Defined here, not at import, so that tests can import the fit.
  flags.DEFINE_string("workdir", None, "Where every run and the results go.")
  flags.DEFINE_string("config", "configs/demo.py", "Base config, FILE or FILE:ARG.")
  flags.DEFINE_list("sizes", ["width:0.5", "width:1", "width:2"], "width:M or depth:M each.")
  flags.DEFINE_list("budgets", ["300", "600", "1200"], "Training updates of every size.")
  flags.DEFINE_enum("fit", "power", sorted(MIN_POINTS), "L = a C^-b ('power') or + c.")
  flags.DEFINE_string("valid_split", "dev", "Held-out split validated after the last update.")
  flags.DEFINE_multi_string("override", [], "FIELD=VALUE: --config.FIELD=VALUE of every run.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
