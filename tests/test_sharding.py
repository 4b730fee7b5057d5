"""Mesh and logical-axis sharding on 8 fake CPU devices: placement of every parameter, and a sharded
training run (data, fully-sharded and tensor parallel at once) that equals the one-device run,
including resume from a sharded checkpoint.

Run in its own process: XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest -m multidevice
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxllm import sharding
from jaxllm.models.transformer import build
from jaxllm.train import loop
from jaxllm.train.metrics import read_metrics

pytestmark = pytest.mark.multidevice

VOCAB, SEQ = 61, 16


@pytest.fixture(autouse=True)
def _eight_devices():
  if jax.device_count() != 8:
    raise RuntimeError("run with XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                       f"(found {jax.device_count()} devices)")


def model_cfg(style="llama"):
  return dict(style=style, vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2 if style == "llama" else None, max_len=SEQ, dtype="float32")


class TokenTask:
  """Next-token prediction on a fixed pseudo-random stream (a pure function of the step)."""

  def __init__(self, style, batch_size):
    self.style, self.batch_size = style, batch_size

  def init_model(self, rngs):
    return build(model_cfg(self.style), rngs=rngs)

  def batch(self, step):
    rng = np.random.default_rng([7, step])
    start = rng.integers(VOCAB, size=(self.batch_size, 1))
    # Arithmetic sequences mod VOCAB: learnable, so the loss moves within a few steps.
    tokens = (start + 3 * np.arange(SEQ + 1)) % VOCAB
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}

  def loss(self, model, batch):
    logits = model(batch["inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {}


def train_config(steps, mesh_shape=None, batch_size=8):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=3e-3, schedule="constant", warmup_steps=0, grad_clip=1.0,
      hparams={}))
  c.train = ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, log_every=1, checkpoint_every=3))
  if mesh_shape is not None:
    c.sharding = ml_collections.ConfigDict(dict(
        mesh_axes=sharding.DEFAULT_AXES, mesh_shape=mesh_shape, rules=sharding.DEFAULT_RULES))
  return c


def losses(workdir):
  return np.array([m["loss"] for m in sorted(read_metrics(workdir), key=lambda m: m["step"])])


def test_mesh_fills_the_minus_one_axis():
  mesh = sharding.make_mesh(("data", "fsdp", "tensor"), (-1, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(sharding.make_mesh(("data",), (-1,)).shape) == {"data": 8}


@pytest.mark.parametrize("shape, match", [
    ((-1, -1, 1), "at most one -1"),
    ((3, -1, 1), "does not divide"),
    ((2, 2, 1), "uses 4 devices but 8"),
    ((2, 4), "same length"),
])
def test_bad_mesh_shapes_say_what_is_wrong(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(("data", "fsdp", "tensor"), shape)


def test_rules_naming_a_missing_mesh_axis_are_rejected():
  cfg = ml_collections.ConfigDict(dict(mesh_axes=("data",), mesh_shape=(-1,),
                                       rules=(("batch", "data"), ("embed", "fsdp"))))
  with pytest.raises(ValueError, match="'embed' to mesh axes \\['fsdp'\\]"):
    sharding.plan_from_config(cfg)


def test_parameters_land_on_their_logical_axes():
  plan = sharding.plan_from_config(ml_collections.ConfigDict(dict(mesh_shape=(2, 2, 2))))
  model = build(model_cfg("llama"), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  specs = jax.tree_util.tree_map(lambda s: s.spec, plan.param_shardings(params))
  attn, mlp = specs["blocks"][0]["attn"], specs["blocks"][0]["mlp"]
  assert attn["wq"]["kernel"] == P("fsdp", "tensor")
  assert attn["wk"]["kernel"] == P("fsdp", "tensor")  # 2 kv heads x 8 = 16 columns over 2
  assert attn["wo"]["kernel"] == P("tensor", "fsdp")
  assert mlp["w_up"]["kernel"] == P("fsdp", "tensor")
  assert mlp["w_down"]["kernel"] == P("tensor", "fsdp")
  assert specs["blocks"][0]["attn_norm"]["scale"] == P(None)
  # A vocabulary of 61 does not split over 2 tensor shards: that dimension replicates.
  assert specs["tok_embed"]["embedding"] == P(None, "fsdp")
  assert specs["lm_head"]["kernel"] == P("fsdp", None)

  placed = jax.device_put(params, plan.param_shardings(params))
  wq = placed["blocks"][0]["attn"]["wq"]["kernel"]
  assert {s.data.shape for s in wq.addressable_shards} == {(16, 16)}
  np.testing.assert_array_equal(np.asarray(wq), np.asarray(params["blocks"][0]["attn"]["wq"]["kernel"]))


def test_optimizer_moments_follow_their_parameters():
  plan = sharding.plan_from_config(ml_collections.ConfigDict(dict(mesh_shape=(2, 2, 2))))
  params = nnx.state(build(model_cfg("gpt2"), rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
  state = {"params": params, "opt_state": optax.adamw(1e-3).init(params),
           "step": jnp.zeros((), jnp.int32)}
  sh = plan.state_shardings(state)
  want = sh["params"]["blocks"][1]["mlp"]["fc_in"]["kernel"].spec
  assert want == P("fsdp", "tensor")
  assert sh["opt_state"][0].mu["blocks"][1]["mlp"]["fc_in"]["kernel"].spec == want
  assert sh["opt_state"][0].nu["blocks"][1]["mlp"]["fc_in"]["kernel"].spec == want
  assert sh["opt_state"][0].count.spec == P()
  assert sh["step"].spec == P()


def test_batch_not_divisible_by_the_batch_axes_is_an_error():
  plan = sharding.plan_from_config(ml_collections.ConfigDict(dict(mesh_shape=(2, 2, 2))))
  with pytest.raises(ValueError, match="train.batch_size=6 is not divisible by the 4 devices"):
    plan.batch_sharding({"inputs": np.zeros((6, 4))})


@pytest.mark.parametrize("style, mesh_shape", [("llama", (2, 2, 2)), ("gpt2", (-1, 1, 1)),
                                               ("gpt2", (1, 4, 2))])
def test_sharded_training_equals_one_device_training(tmp_path, style, mesh_shape):
  single = loop.train(train_config(6), str(tmp_path / "single"), TokenTask(style, 8),
                      progress=False)
  sharded = loop.train(train_config(6, mesh_shape), str(tmp_path / "sharded"),
                       TokenTask(style, 8), progress=False)
  want, got = losses(tmp_path / "single"), losses(tmp_path / "sharded")
  assert len(got) == 6 and want[-1] < want[0] - 0.05  # it trains
  np.testing.assert_allclose(got, want, rtol=2e-5)
  a = nnx.state(single.model, nnx.Param).to_pure_dict()
  b = nnx.state(sharded.model, nnx.Param).to_pure_dict()
  # Adam moves each weight by about lr per step (0.018 in all): 2e-5 is 0.1% of that, far below
  # what a mis-sharded gradient or a dropped shard would give.
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5), a, b)


def test_sharded_resume_reproduces_the_straight_run(tmp_path):
  straight = str(tmp_path / "straight")
  loop.train(train_config(6, (2, 2, 2)), straight, TokenTask("llama", 8), progress=False)
  resumed = str(tmp_path / "resumed")
  loop.train(train_config(3, (2, 2, 2)), resumed, TokenTask("llama", 8), progress=False)
  result = loop.train(train_config(6, (2, 2, 2)), resumed, TokenTask("llama", 8), progress=False)
  assert result.resumed_from == 3
  np.testing.assert_array_equal(losses(resumed), losses(straight))


def test_the_loop_shards_batches_over_the_mesh(tmp_path):
  with pytest.raises(ValueError, match="train.batch_size=6 is not divisible by the 4 devices"):
    loop.train(train_config(2, (1, 4, 2), batch_size=6), str(tmp_path), TokenTask("gpt2", 6),
               progress=False)
