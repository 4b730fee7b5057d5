"""Parameter labelling, the registry, memory accounting and Step Law."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm import optim
from jaxllm.models import config as model_config
from jaxllm.models import transformer
from jaxllm.optim import adam, labels, memory

MATRIX_METHODS = ("galore", "muon", "fira", "frugal", "cosmos")


def lm_params():
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(0.2 * rng.normal(size=s), jnp.float32)
  block = {"attn": {n: {"kernel": r(16, 16), "bias": r(16)} for n in ("wq", "wk", "wv", "wo")},
           "attn_norm": {"scale": r(16)},
           "mlp": {"w_up": {"kernel": r(16, 40)}, "w_down": {"kernel": r(40, 16)}},
           "mlp_norm": {"scale": r(16), "bias": r(16)}}
  return {"tok_embed": {"embedding": r(30, 16)}, "pos_embed": {"embedding": r(8, 16)},
          "blocks": {"0": block, "1": jax.tree.map(lambda x: x + 0.0, block)},
          "final_norm": {"scale": r(16)}, "lm_head": {"kernel": r(16, 30)},
          "read_in": {"kernel": r(5, 16)}}


def test_labels_route_embeddings_head_norms_and_biases_away_from_hidden():
  labs = optim.label_params(lm_params())
  assert labs["tok_embed"]["embedding"] == labs["pos_embed"]["embedding"] == labels.EMBEDDING
  assert labs["lm_head"]["kernel"] == labs["read_in"]["kernel"] == labels.HEAD
  assert labs["final_norm"]["scale"] == labs["blocks"]["0"]["mlp_norm"]["bias"] == labels.NORM
  assert labs["blocks"]["1"]["attn"]["wq"]["bias"] == labels.BIAS
  hidden = [jax.tree_util.keystr(p) for p, lab in jax.tree_util.tree_leaves_with_path(labs)
            if lab == labels.HIDDEN]
  assert len(hidden) == 12 and all("kernel" in h and "blocks" in h for h in hidden)


def test_labels_on_the_decoder_lm():
  cfg = model_config.TransformerConfig(d_model=32, num_layers=2, num_heads=2, vocab_size=50,
                                       max_len=16)
  model = nnx.eval_shape(lambda: transformer.build(cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  mask = jax.tree_util.tree_leaves_with_path(optim.hidden_mask(params))
  for path, is_hidden in mask:
    name = jax.tree_util.keystr(path)
    assert is_hidden == ("blocks" in name and name.endswith("['kernel']")), name


def small_lm_params():
  rng = np.random.default_rng(1)
  r = lambda *s: jnp.asarray(0.2 * rng.normal(size=s), jnp.float32)
  return {"tok_embed": {"embedding": r(12, 8)},
          "blocks": {"0": {"mlp": {"w_up": {"kernel": r(8, 6), "bias": r(6)}},
                           "mlp_norm": {"scale": r(8)}}},
          "lm_head": {"kernel": r(8, 12)}}


@pytest.mark.parametrize("name", MATRIX_METHODS)
def test_matrix_methods_give_non_hidden_leaves_their_official_adam_branch(name):
  params = small_lm_params()
  lr = 1e-3
  opt = optim.make(name, lr, weight_decay=0.1)
  if name in ("galore", "fira"):  # transformers-style AdamW: eps inside, decay after the step
    ref = adam.hf_adamw(lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1)
  elif name == "muon":  # MuonWithAuxAdam's defaults; its weight decay is Muon's only
    ref = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.0)
  else:
    ref = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)
  u, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  u_ref, _ = ref.update(grads, ref.init(params), params)
  labs = optim.label_params(params)
  for lab, a, b in zip(jax.tree.leaves(labs), jax.tree.leaves(u), jax.tree.leaves(u_ref)):
    if lab != labels.HIDDEN:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
  hidden_bytes = memory.state_bytes(name, params)
  assert hidden_bytes == memory.measured_state_bytes(opt, params)


def test_registry_names_errors_and_extra_args():
  for n in ("sophia_g", "sophia_h", "adahessian", "spam", "fira", "frugal", "cosmos", "soap",
            "galore", "muon", "zo_adam", "forward_grad"):
    assert n in optim.NAMES
  with pytest.raises(ValueError, match="valid"):
    optim.make("adamm", 1e-3)
  with pytest.raises(ValueError, match="unknown hyperparameter 'rnak'"):
    optim.make("fira", 1e-3, rnak=4)
  with pytest.raises(ValueError, match="variant"):
    optim.make("frugal", 1e-3, variant="rows")
  assert optim.EXTRA_ARGS["sophia_g"] == ("logits_fn",)
  assert isinstance(optim.make("adahessian", 0.1), optax.GradientTransformationExtraArgs)


HPARAMS = {"galore": dict(rank=4), "fira": dict(rank=4), "cosmos": dict(rank=3),
           "soap": dict(max_precond_dim=20), "spam": dict(density=0.3),
           "frugal": dict(variant="random")}


@pytest.mark.parametrize("schedule", [False, True])
def test_memory_formula_equals_actual_state_bytes_for_every_optimizer(schedule):
  params = lm_params()
  lr = optax.cosine_decay_schedule(1e-3, 100) if schedule else 1e-3
  for name in optim.NAMES:
    hp = HPARAMS.get(name, {})
    opt = optim.make(name, lr, grad_clip=1.0, **hp)
    measured = memory.measured_state_bytes(opt, params)
    assert memory.state_bytes(name, params, lr, **hp) == measured, name


def test_memory_per_matrix_formulas():
  w = {"blocks": {"0": {"mlp": {"kernel": jnp.zeros((64, 256))}}}}
  a, b = 64, 256
  assert memory.state_bytes("adamw", w) == 4 + 8 * a * b
  assert memory.state_bytes("fira", w, rank=16) == 4 + 4 * (a * 16 + 2 * 16 * b + 1) + 4
  assert memory.state_bytes("cosmos", w, rank=8) == 4 + 4 * (a * b + a * 8 + b * 8 + 64) + 4
  assert memory.state_bytes("soap", w) == 8 + 4 * (2 * a * b + 2 * (a * a + b * b))
  assert memory.state_bytes("galore", w, rank=16) == 4 + 4 * (a * 16 + 2 * 16 * b) + 4
  assert memory.state_bytes("muon", w) == 4 * a * b + 4
  assert memory.state_bytes("frugal", w, variant="svd") == 12 + 4 * (a * 16 + 2 * 16 * b) + 4
  assert memory.state_bytes("zo_sgd", w) == 8


def test_step_law():
  lr, batch = optim.step_law(1e8, 2e10)
  np.testing.assert_allclose(lr, 1.79 * 1e8 ** -0.713 * 2e10 ** 0.307, rtol=1e-12)
  np.testing.assert_allclose(batch, 0.58 * 2e10 ** 0.571, rtol=1e-12)
  lr2, _ = optim.step_law(2e8, 2e10)
  np.testing.assert_allclose(lr / lr2, 2 ** 0.713, rtol=1e-12)
  assert optim.non_embedding_params(lm_params()) == sum(
      x.size for x in jax.tree.leaves(lm_params())) - 30 * 16 - 8 * 16
  with pytest.raises(ValueError, match="positive"):
    optim.step_law(0, 1e9)


def test_states_can_be_donated_and_checkpointed():
  # No two leaves share a buffer (the train step donates its state) and none is empty (orbax
  # refuses zero-size arrays).
  params = small_lm_params()
  for name in optim.NAMES:
    leaves = jax.tree.leaves(optim.make(name, 1e-3, **HPARAMS.get(name, {})).init(params))
    assert all(x.size for x in leaves), name
    pointers = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(pointers)) == len(pointers), name
