"""Meshes for real TPU topologies, built from fake devices that carry coordinates.

As t5x's and JAX's own mesh tests do, the devices are plain objects with the attributes
`mesh_utils` reads (`coords`, `core_on_chip`, `device_kind`, `slice_index`, ...), so pod
layouts are checked on a laptop: the axis sizes, and that each `tensor` group and each
`fsdp` x `tensor` group is a compact block of the physical torus (their collectives stay on
the fastest links) and that with several slices only `data` crosses slices.
"""

import dataclasses
import itertools

import numpy as np
import pytest

from sslax.core import sharding


@dataclasses.dataclass(frozen=True)
class FakeTpu:
  id: int
  coords: tuple[int, int, int]
  core_on_chip: int
  device_kind: str
  process_index: int
  slice_index: int
  platform: str = "tpu"


def fake_pod(device_kind, topology, *, num_slices=1, chips_per_host=4):
  """One device per chip (v4/v5p megacore, v5e), hosts owning consecutive chips."""
  devices = []
  chips = list(itertools.product(*(range(n) for n in reversed(topology))))
  for s in range(num_slices):
    for i, (z, y, x) in enumerate(chips):
      devices.append(
        FakeTpu(
          id=len(devices),
          coords=(x, y, z),
          core_on_chip=0,
          device_kind=device_kind,
          process_index=(s * len(chips) + i) // chips_per_host,
          slice_index=s,
        )
      )
  return devices


def is_compact_block(group) -> bool:
  """True when the devices fill their coordinates' bounding box (no holes, no strays)."""
  coords = np.array([d.coords for d in group])
  extent = coords.max(0) - coords.min(0) + 1
  return int(np.prod(extent)) == len(group) and len({d.coords for d in group}) == len(group)


TOPOLOGIES = {
  # name: (device_kind, chip topology, slices, config.mesh, resolved shape)
  "v4-128": ("TPU v4", (4, 4, 4), 1, dict(data=-1, fsdp=16, tensor=1), (4, 16, 1)),
  "v5e-256": ("TPU v5 lite", (16, 16, 1), 1, dict(data=-1, fsdp=64, tensor=4), (1, 64, 4)),
  "v5p-256": ("TPU v5p", (4, 4, 8), 1, dict(data=2, fsdp=16, tensor=4), (2, 16, 4)),
  "2x v5e-256": (
    "TPU v5 lite",
    (16, 16, 1),
    2,
    dict(data=-1, fsdp=256, tensor=1, dcn_data=2),
    (2, 256, 1),
  ),
}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_mesh_follows_the_physical_layout(name):
  kind, topology, slices, axis_sizes, expected_shape = TOPOLOGIES[name]
  devices = fake_pod(kind, topology, num_slices=slices)
  # The layout must come from the coordinates, not from the order devices are listed in.
  np.random.default_rng(0).shuffle(devices)
  grid = sharding.device_grid(axis_sizes, devices)

  assert grid.shape == expected_shape
  assert sorted(d.id for d in grid.flat) == list(range(len(devices)))
  data, fsdp, tensor = grid.shape
  per_slice_data = data // slices
  for i in range(data):
    # Everything but `data` stays inside one slice, on one compact block of its torus.
    block = list(grid[i].flat)
    assert {d.slice_index for d in block} == {i // per_slice_data}
    assert is_compact_block(block), f"{name}: data row {i} is scattered over the torus"
    for j in range(fsdp):
      assert is_compact_block(list(grid[i, j])), f"{name}: tensor group ({i}, {j})"


def test_dcn_data_must_match_the_slices():
  devices = fake_pod("TPU v5 lite", (16, 16, 1), num_slices=2)
  with pytest.raises(ValueError, match="config.mesh.dcn_data=4"):
    sharding.device_grid(dict(data=-1, fsdp=128, tensor=1, dcn_data=4), devices)
  with pytest.raises(ValueError, match="config.mesh.dcn_data=2"):
    sharding.device_grid(dict(data=1, fsdp=512, tensor=1, dcn_data=2), devices)


def test_processes_are_the_dcn_granules_without_slices():
  """On GPU clusters (no slice_index) each process, one per node, is a granule."""

  @dataclasses.dataclass(frozen=True)
  class FakeGpu:
    id: int
    process_index: int
    device_kind: str = "NVIDIA H100 80GB HBM3"
    platform: str = "gpu"

  devices = [FakeGpu(id=i, process_index=i // 8) for i in range(32)]
  grid = sharding.device_grid(dict(data=-1, fsdp=8, tensor=1, dcn_data=4), devices)
  assert grid.shape == (4, 8, 1)
  for i in range(4):
    assert {d.process_index for d in grid[i].flat} == {i}
