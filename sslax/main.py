"""sslax entry point: `python -m sslax.main --config=configs/NAME.py --workdir=DIR`.

Config fields are overridden with `--config.FIELD=value` (e.g. `--config.total_steps=10`,
`--config.mesh.fsdp=4`); an unknown field is an error. `--config.job=evaluate` scores the
run in the workdir as its own config.json describes it: only what evaluation is free to
change may be overridden (sslax/evaluate.py `EVALUATION_FREE`). Multi-host jobs pass
`--coordinator_address`, `--num_processes` and `--process_id` (or set nothing on TPU pods,
where `--distributed` alone lets JAX find its peers).
"""

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from sslax import evaluate, loop
from sslax.core import chatter
from sslax.train import ctc_step, distributed
from sslax.units import job as units_job
from sslax.units import layer_choice

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and config.json go.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() (auto-detected on TPU/SLURM)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
  "local_device_ids",
  None,
  "GPUs this process drives (e.g. 0,1,2,3,4,5,6,7 for one process per node); by default "
  "JAX gives each SLURM task the GPU of its local rank.",
)

_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
  "coordinator_timeout", 300, "Seconds to wait for the coordinator (process 0) to be reachable."
)

flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  chatter.install()
  # Must precede any device query.
  if _DISTRIBUTED.value or _COORDINATOR.value:
    distributed.initialize(
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      [int(i) for i in _LOCAL_DEVICE_IDS.value or []] or None,
      timeout_s=_COORDINATOR_TIMEOUT.value,
    )
  config = _CONFIG.value
  logging.info("job %s, process %d/%d", config.job, jax.process_index(), jax.process_count())
  if config.job == "pretrain":
    loop.train(config, _WORKDIR.value)
  elif config.job == "finetune":
    loop.train(config, _WORKDIR.value, ctc_step.finetuning_setup)
  elif config.job == "evaluate":
    overrides = config_flags.get_override_values(flags.FLAGS[_CONFIG.name])
    evaluate.evaluate(evaluate.evaluation_config(_WORKDIR.value, config, overrides), _WORKDIR.value)
  elif config.job == "kmeans":
    units_job.run(layer_choice.resolve(config, _WORKDIR.value), _WORKDIR.value)
  else:
    raise ValueError(
      f"config.job={config.job!r} is not a job sslax runs; expected 'pretrain', 'finetune', "
      "'evaluate' or 'kmeans'"
    )


if __name__ == "__main__":
  app.run(main)
