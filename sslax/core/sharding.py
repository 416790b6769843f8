"""The device mesh and the one table that maps logical axis names to mesh axes.

This is the only module that builds `PartitionSpec`s. Models name the axes of their
parameters and activations from a closed list (batch, time, embed, mlp, heads, kv, conv,
codebook, vocab); `LOGICAL_AXIS_RULES` says where each lands on the
`('data', 'fsdp', 'tensor')` mesh:

* `data`: pure data parallelism (parameters replicated).
* `fsdp`: data parallelism with parameters and optimizer state sharded along `embed`
  (ZeRO-3 style; XLA gathers them per layer).
* `tensor`: Megatron-style model parallelism over feed-forward and attention heads.
"""

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import math

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", "tensor"),
  ("time", None),
  ("kv", None),
  ("conv", None),
  ("codebook", None),
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves `{'data': -1, 'fsdp': 2, 'tensor': 1}`-style sizes against a device count.

  At most one axis may be -1; it takes the devices the others leave. An optional
  `dcn_data` (slices the data axis spans, see `make_mesh`) is not part of the shape:
  the sizes are those of the whole mesh with `data` counted across slices.
  Raises ValueError naming the field when the sizes cannot tile `num_devices`.
  """
  unknown = set(axis_sizes) - set(MESH_AXES) - {"dcn_data"}
  if unknown:
    raise ValueError(
      f"config.mesh has unknown axes {sorted(unknown)}; expected {MESH_AXES} (+ dcn_data)"
    )
  sizes = [int(axis_sizes[name]) for name in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh={dict(axis_sizes)}: sizes must be positive, one may be -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
        f"config.mesh={dict(axis_sizes)}: the fixed axes ({fixed} devices) do not divide "
        f"the {num_devices} devices; change config.mesh"
      )
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"config.mesh={dict(axis_sizes)} needs {math.prod(sizes)} devices but "
      f"{num_devices} are available; change config.mesh (one axis may be -1)"
    )
  return tuple(sizes)


def _granules(devices: Sequence[jax.Device]) -> dict[int, int]:
  """Devices per DCN granule: TPU slices (`slice_index`), else processes (GPU nodes)."""
  counts: dict[int, int] = {}
  for d in devices:
    key = getattr(d, "slice_index", None)
    key = d.process_index if key is None else key
    counts[key] = counts.get(key, 0) + 1
  return counts


def device_grid(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device]) -> np.ndarray:
  """The devices arranged as the `('data', 'fsdp', 'tensor')` mesh (see `make_mesh`).

  Within a slice, `mesh_utils.create_device_mesh` orders devices by their physical
  topology on TPUs, so the innermost (`tensor`) axis gets the fastest links and each
  `fsdp` group is a compact block of the torus. With `dcn_data = n > 1` the mesh spans n
  granules joined by the data-centre network (TPU slices; on GPU clusters, processes:
  run one per node): `data` is split into n outer blocks, one per granule, so only the
  data-parallel gradient reduction crosses DCN (`create_hybrid_device_mesh`).
  """
  shape = mesh_shape(axis_sizes, len(devices))
  dcn_data = int(axis_sizes.get("dcn_data", 1))
  if dcn_data == 1:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  granules = _granules(devices)
  if len(granules) != dcn_data or shape[0] % dcn_data:
    raise ValueError(
      f"config.mesh.dcn_data={dcn_data}: the devices form {len(granules)} slices (or "
      f"processes) and config.mesh.data resolves to {shape[0]}; dcn_data must equal "
      "the slice count and divide data"
    )
  return mesh_utils.create_hybrid_device_mesh(
    (shape[0] // dcn_data, *shape[1:]),
    (dcn_data, 1, 1),
    devices,
    process_is_granule=not hasattr(devices[0], "slice_index"),
    allow_split_physical_axes=True,
  )


def make_mesh(
  axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
  """Builds the `('data', 'fsdp', 'tensor')` mesh over `devices` (default: all devices).

  The layout is `device_grid`'s. Axes are `Auto`, so `with_sharding_constraint` and
  logical constraints work inside jit.
  """
  devices = jax.devices() if devices is None else list(devices)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.sharding.Mesh(device_grid(axis_sizes, devices), MESH_AXES, axis_types=auto)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh) -> Iterator[None]:
  """Context for tracing sharded code: the mesh and the logical rules.

  Logical constraints inside models (`nn.with_logical_constraint`) need both; under the
  legacy `with mesh:` they are silently dropped, so always trace inside this.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def logical_to_sharding(logical_specs, mesh: jax.sharding.Mesh):
  """Maps a tree of logical `PartitionSpec`s to `NamedSharding`s with the rules table."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Shards the leading (batch) dimension over every data-parallel axis."""
  batch_axes = dict(LOGICAL_AXIS_RULES)["batch"]
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """Number of batch shards: the global batch must be a multiple of it."""
  return math.prod(mesh.shape[a] for a in dict(LOGICAL_AXIS_RULES)["batch"])


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Assembles each process's part of the batch into global arrays sharded over batch.

  Every process passes its own rows (`global_batch_size / process_count` of them);
  nothing assumes a single host.
  """
  sharding = batch_sharding(mesh)
  return {
    name: jax.make_array_from_process_local_data(sharding, value)
    for name, value in host_batch.items()
  }
