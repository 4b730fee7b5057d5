"""optim.make rejects bad arguments up front with a ValueError naming the field."""

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxllm import optim

BAD = [
    (("adam", "abc"), {}, "learning_rate"),
    (("adam", -1e-3), {}, "learning_rate"),
    (("adam", float("nan")), {}, "learning_rate"),
    (("adam", [1e-3]), {}, "learning_rate"),
    (("adam", 1e-3), {"grad_clip": "1"}, "grad_clip"),
    (("adam", 1e-3), {"grad_clip": 0.0}, "grad_clip"),
    (("adam", 1e-3), {"grad_clip": [1.0]}, "grad_clip"),
    (("adam", 1e-3), {"b1": [0.9]}, "b1"),
    (("adam", 1e-3), {"b2": 1.5}, "b2"),
    (("adam", 1e-3), {"eps": "1e-8"}, "eps"),
    (("adamw", 1e-3), {"weight_decay": -0.1}, "weight_decay"),
    (("sgd", 1e-3), {"momentum": "0.9"}, "momentum"),
    (("galore", 1e-3), {"rank": "4"}, "rank"),
    (("galore", 1e-3), {"rank": 2.5}, "rank"),
    (("fira", 1e-3), {"update_proj_gap": 0}, "update_proj_gap"),
    (("muon", 0.02), {"nesterov": "yes"}, "nesterov"),
    (("muon", 0.02), {"other_learning_rate": "3e-4"}, "other_learning_rate"),
    (("frugal", 1e-3), {"variant": ["block"]}, "variant"),
    (("frugal", 1e-3), {"block_order": "sideways"}, "block_order"),
    (("cosmos", 1e-3), {"b3": 0.96}, "b3"),
    (("soap", 1e-3), {"shampoo_b": "x"}, "shampoo_b"),
    (("adafactor", 1e-3), {"factored": 1}, "factored"),
    (("zo_sgd", 1e-3), {"eps": None}, "eps"),
    (("lion", 1e-3), {"weight_decay": {"a": 1}}, "weight_decay"),
]


@pytest.mark.parametrize("args,kw,field", BAD, ids=[f"{a[0]}-{f}" for a, _, f in BAD])
def test_bad_argument_is_a_value_error_naming_the_field(args, kw, field):
  with pytest.raises(ValueError, match=field):
    optim.make(*args, **kw)


def test_good_arguments_build():
  schedule = optax.cosine_decay_schedule(1e-3, 10)
  for name in optim.NAMES:
    assert optim.make(name, schedule, grad_clip=1) is not None
  optim.make("adam", jnp.float32(1e-3), b1=jnp.float32(0.8))
  optim.make("sgd", 0, momentum=0.9)
  optim.make("muon", 0.02, other_learning_rate=schedule, ns_steps=3)
  optim.make("spam", 1e-3, density=0.5)
  optim.make("adafactor", 1e-3, momentum=0.9, weight_decay_mask=lambda p: p)


def test_matrix_methods_run_on_a_tree_without_hidden_kernels():
  # Only a norm scale, a bias and a 4-D kernel: everything goes to the Adam branch.
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "final_norm": {"scale": jnp.ones(4)},
            "out": {"bias": jnp.zeros(4)}}
  grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)
  for name in ("galore", "fira", "muon", "cosmos", "frugal"):
    opt = optim.make(name, 1e-3)
    u, _ = opt.update(grads, opt.init(params), params)
    assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(u)), name


@pytest.mark.parametrize("kw,field", [
    (dict(peak=-1e-3), "learning_rate"), (dict(peak="1e-3"), "learning_rate"),
    (dict(peak=[1e-3]), "learning_rate"), (dict(final_fraction=2.0), "final_fraction"),
    (dict(warmup_steps="10"), "warmup_steps"), (dict(total_steps=10.5), "total_steps"),
    (dict(warmup_steps=200), "warmup_steps")])
def test_bad_schedule_argument_is_a_value_error_naming_the_field(kw, field):
  args = dict(peak=1e-3, total_steps=100, warmup_steps=10) | kw
  with pytest.raises(ValueError, match=field):
    optim.make_schedule("cosine", **args)
