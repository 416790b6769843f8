"""Plots training curves of pretraining runs from their metrics.jsonl, one panel per metric.

  python tools/plot_runs.py --out=curves.png /tmp/sslax-demo=demo [DIR=LABEL ...] \
    --metrics=accuracy,contrastive_loss,code_perplexity

Each positional argument is a workdir written by `python -m sslax.main` (WORKDIR/metrics.jsonl:
one JSON line per logged step), optionally `=LABEL`. Lines are the logged training means
(train mode: dropout, Gumbel-sampled targets); dots are the held-out validation lines
(`config.valid`) of the same run and colour. The accuracy panel marks chance, 1 / (K + 1),
and the contrastive-loss panel ln(K + 1), for --num_negatives K. --table prints a markdown
row per run: the first logged step whose accuracy exceeds --leave (the end of the plateau),
the last training line's step and accuracy, and the last validation accuracy.
"""

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  """A run's training lines and its validation lines, each in step order (a resumed run's
  repeated steps keep their last line; a last line a running job is still writing, without
  its newline yet, is left out)."""
  train, valid = {}, {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      if not line.endswith("\n"):
        break
      record = json.loads(line)
      if "valid" in record:
        valid[record["step"]] = dict(record["valid"], step=record["step"])
      else:
        train[record["step"]] = record
  return [train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)]


def leaves_chance(records: list[dict], threshold: float) -> int | None:
  """The first logged step whose accuracy exceeds `threshold`, or None."""
  return next((r["step"] for r in records if r.get("accuracy", 0.0) > threshold), None)


def chance_line(metric: str, num_negatives: int) -> float | None:
  """Where a model that ranks candidates at random sits on `metric`, if it is one of ours."""
  return {"accuracy": 1 / (num_negatives + 1), "contrastive_loss": math.log(num_negatives + 1)}.get(
    metric
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.add_argument("runs", nargs="+", help="WORKDIR or WORKDIR=LABEL")
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--metrics", default="accuracy,contrastive_loss")
  parser.add_argument("--title", default="")
  parser.add_argument("--num_negatives", type=int, default=100, help="K, for the chance lines")
  parser.add_argument("--leave", type=float, default=0.05, help="accuracy that ends a plateau")
  parser.add_argument("--table", action="store_true", help="print a markdown row per run")
  args = parser.parse_args()

  metrics = args.metrics.split(",")
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics) + 2.5, 4.5), squeeze=False)
  colours = plt.get_cmap("tab10").colors
  for index, spec in enumerate(args.runs):
    workdir, _, label = spec.partition("=")
    label = label or os.path.basename(os.path.normpath(workdir))
    colour = colours[index % len(colours)]
    records, valid = read_metrics(workdir)
    for axis, metric in zip(axes[0], metrics, strict=True):
      logged = [r for r in records if metric in r]
      axis.plot([r["step"] for r in logged], [r[metric] for r in logged], color=colour, label=label)
      held_out = [v for v in valid if metric in v]
      axis.plot(
        [v["step"] for v in held_out],
        [v[metric] for v in held_out],
        marker="o",
        linestyle="none",
        color=colour,
      )
    if args.table:
      last_valid = f"{valid[-1]['accuracy']:.3f} ({valid[-1]['step']})" if valid else "n/a"
      left = leaves_chance(records, args.leave)
      print(
        f"| {label} | {left if left is not None else 'never'} | {records[-1]['step']} | "
        f"{records[-1]['accuracy']:.3f} | {last_valid} |"
      )
  for axis, metric in zip(axes[0], metrics, strict=True):
    chance = chance_line(metric, args.num_negatives)
    if chance is not None:
      axis.axhline(
        chance, color="grey", linestyle="--", linewidth=1, label="1 / (K + 1), ln(K + 1)"
      )
    axis.set_xlabel("update")
    axis.set_ylabel(metric + " (lines: train; dots: valid)")
    axis.grid(alpha=0.3)
  fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8)
  if args.title:
    fig.suptitle(args.title)
  fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.2 / fig.get_figwidth(), 1.0))
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
