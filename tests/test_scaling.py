"""benchmarks/scaling.py: its power-law fits recover known exponents and its sizes scale the
model as documented."""

import importlib.util
import os

import numpy as np
import pytest

from configs import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scaling():
  path = os.path.join(REPO, "benchmarks", "scaling.py")
  spec = importlib.util.spec_from_file_location("scaling_benchmark", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


COMPUTE = np.geomspace(3e12, 2e15, 6)  # FLOPs, the demo grid's range


def test_power_fit_recovers_a_known_exponent_through_noise(scaling):
  rng = np.random.default_rng(0)
  loss = 40.0 * COMPUTE**-0.07 * np.exp(rng.normal(0, 0.002, COMPUTE.shape))
  fit = scaling.fit_power_law(COMPUTE, loss, "power")
  assert fit["b"] == pytest.approx(0.07, abs=0.005)
  assert fit["c"] == 0.0
  np.testing.assert_allclose(scaling.power_law(COMPUTE, fit), loss, rtol=0.01)


def test_offset_fit_recovers_exponent_and_floor(scaling):
  loss = 2.0e4 * COMPUTE**-0.35 + 3.4
  fit = scaling.fit_power_law(COMPUTE, loss, "offset")
  assert fit["b"] == pytest.approx(0.35, rel=1e-3)
  assert fit["c"] == pytest.approx(3.4, abs=1e-3)
  assert fit["a"] == pytest.approx(2.0e4, rel=1e-2)
  # A plain power law through the same points has a much smaller exponent: the floor matters.
  assert scaling.fit_power_law(COMPUTE, loss, "power")["b"] < 0.2


def test_fit_refuses_too_few_points(scaling):
  with pytest.raises(ValueError, match="at least 4 budgets"):
    scaling.fit_power_law(COMPUTE[:3], np.ones(3), "offset")
  with pytest.raises(ValueError, match="positive"):
    scaling.fit_power_law(COMPUTE[:2], np.array([1.0, 0.0]), "power")


def test_sizes_scale_the_demo_model(scaling):
  model = demo.get_config().model
  assert scaling.size_overrides(model, "width:2") == {
    "model.embed_dim": 2 * model.embed_dim,
    "model.mlp_dim": 2 * model.mlp_dim,
  }
  assert scaling.size_overrides(model, "depth:0.5") == {"model.num_layers": model.num_layers // 2}
  assert scaling.run_name("width:0.5", 400) == "width0.5_400steps"
  for bad, message in (
    ("height:2", "width:M or depth:M"),
    ("width:-1", "positive"),
    ("depth:0.3", "not an integer"),
  ):
    with pytest.raises(ValueError, match=message):
      scaling.size_overrides(model, bad)
  # 64 x 0.40625 = 26 wide, which the demo's 4 heads do not divide.
  with pytest.raises(ValueError, match="num_heads=4 does not divide"):
    scaling.size_overrides(model, "width:0.40625")
