"""Long-context evaluation of any LM given as ``logits_fn(tokens [B, T]) -> logits [B, T, V]``.

* ``position_perplexity``: next-token loss by position in the context, on held-out text at
  lengths up to several times the training length (does the model use, or break on, far context);
* ``retrieval``: a key-value needle hidden at a depth (0..100 % of the context) in a real-text
  haystack, then asked for at the end, on a (context length x depth) grid:

  - ``passkey``: the passkey task of Mohtashami & Jaggi (2023, landmark attention): one needle
    ("The pass key is 71432. Remember it. 71432 is the pass key.");
  - ``needle``: single-key needle-in-a-haystack (Kamradt 2023; RULER's S-NIAH, Hsieh et al. 2024):
    "The special magic number for <word> is: <7 digits>.";
  - ``multikey``: RULER's MK-NIAH: ``num_keys`` needles with different keys, one asked for (the
    one at the grid depth, the others at random depths).

  The answer is scored teacher-forced: ``accuracy`` counts a sample right when every answer token
  is the model's argmax given the true prefix (the same as greedy decoding producing the answer),
  ``token_accuracy`` per answer token, ``answer_logprob`` the answer's summed log-probability.
  ``style="code"`` writes the needles as Python assignments (``PASSKEY = 71432``, queried with
  ``assert PASSKEY == ``) for models trained on source code.

Text pieces (haystack, needle, question, answer) are tokenized separately and concatenated, so
every sequence has exactly the requested number of tokens and the answer's tokens are known.
``draw`` renders results as heatmaps and position-loss curves.
"""

import dataclasses
import math

import numpy as np

TASKS = ("passkey", "needle", "multikey")
STYLES = ("prose", "code")
_WORDS = ("apple", "river", "candle", "silver", "garden", "thunder", "marble", "falcon",
          "harbor", "meadow", "copper", "lantern", "orchid", "glacier", "velvet", "ember")


@dataclasses.dataclass(frozen=True)
class _Template:
  needle: str  # format fields: key, value
  question: str  # format field: key


_TEMPLATES = {
    ("passkey", "prose"): _Template(
        "\nThe pass key is {value}. Remember it. {value} is the pass key.\n",
        "\nWhat is the pass key? The pass key is "),
    ("needle", "prose"): _Template(
        "\nOne of the special magic numbers for {key} is: {value}.\n",
        "\nWhat is the special magic number for {key} mentioned in the provided text? "
        "The special magic number for {key} mentioned in the provided text is "),
    ("passkey", "code"): _Template("\nPASSKEY = {value}  # remember it\n",
                                   "\nassert PASSKEY == "),
    ("needle", "code"): _Template("\nMAGIC_{key} = {value}\n", "\nassert MAGIC_{key} == "),
}


def _template(task: str, style: str) -> _Template:
  if task not in TASKS:
    raise ValueError(f"task={task!r}; allowed: {list(TASKS)}")
  if style not in STYLES:
    raise ValueError(f"style={style!r}; allowed: {list(STYLES)}")
  return _TEMPLATES[("passkey" if task == "passkey" else "needle", style)]


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def _batched_logits(logits_fn, tokens, batch_size: int):
  out = []
  for i in range(0, len(tokens), batch_size):
    out.append(np.asarray(logits_fn(np.asarray(tokens[i:i + batch_size], np.int32)), np.float32))
  return np.concatenate(out)


def position_perplexity(logits_fn, haystack: np.ndarray, lengths, *, num_sequences: int,
                        bucket: int, batch_size: int = 4, seed: int = 0) -> dict:
  """Mean next-token loss (nats) per position bucket, for each context length.

  ``haystack`` is a long 1D array of held-out token ids; each sequence is a random window of it.
  Returns {"bucket": size, "lengths": {T: {"start": [...], "loss": [...], "ppl": [...]}}}, where
  bucket j covers target positions [j * bucket, (j + 1) * bucket).
  """
  rng = np.random.default_rng(seed)
  out = {"bucket": int(bucket), "lengths": {}}
  for t in lengths:
    t = int(t)
    if len(haystack) < t + 2:
      raise ValueError(f"held-out text has {len(haystack)} tokens, fewer than length {t} + 2")
    starts = rng.integers(0, len(haystack) - t - 1, num_sequences)
    rows = np.stack([haystack[s:s + t + 1] for s in starts])
    logp = _log_softmax(_batched_logits(logits_fn, rows[:, :-1], batch_size))
    nll_T = -np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0].mean(0)
    n = math.ceil(t / bucket)
    loss = [float(nll_T[j * bucket:(j + 1) * bucket].mean()) for j in range(n)]
    out["lengths"][t] = {"start": [j * bucket for j in range(n)], "loss": loss,
                         "ppl": [math.exp(x) for x in loss], "mean_loss": float(nll_T.mean())}
  return out


def _sample(tokenizer, haystack, length: int, depth: float, task: str, style: str, num_keys: int,
            rng) -> tuple[np.ndarray, int, int]:
  """One sequence of exactly ``length`` tokens; returns (tokens, answer start, answer length)."""
  tmpl = _template(task, style)
  digits = 5 if task == "passkey" else 7
  n_needles = num_keys if task == "multikey" else 1
  keys = [str(k) for k in rng.choice(_WORDS, n_needles, replace=False)]
  values = [str(int(rng.integers(10 ** (digits - 1), 10 ** digits))) for _ in keys]
  if style == "code":
    keys = [k.upper() for k in keys]
  needles = [tokenizer.encode(tmpl.needle.format(key=k, value=v)) for k, v in zip(keys, values)]
  question = tokenizer.encode(tmpl.question.format(key=keys[0]))
  answer = tokenizer.encode(values[0])
  fixed = sum(len(x) for x in needles) + len(question) + len(answer)
  context = length - fixed
  if context < 1:
    raise ValueError(f"length {length} is too short for the {task} needles and question "
                     f"({fixed} tokens)")
  start = int(rng.integers(0, len(haystack) - context))
  hay = haystack[start:start + context]
  # The asked needle sits at ``depth`` of the context; distractors at random depths.
  cuts = [round(depth * context)] + [int(c) for c in rng.integers(0, context + 1, n_needles - 1)]
  order = np.argsort(cuts, kind="stable")
  pieces, prev = [], 0
  for i in order:
    pieces += [hay[prev:cuts[i]], needles[i]]
    prev = cuts[i]
  pieces += [hay[prev:], question, answer]
  tokens = np.concatenate([np.asarray(p, np.int32) for p in pieces])
  assert len(tokens) == length
  return tokens, length - len(answer), len(answer)


def retrieval(logits_fn, tokenizer, haystack: np.ndarray, *, task: str, lengths, depths,
              num_samples: int, num_keys: int = 4, style: str = "prose", batch_size: int = 4,
              seed: int = 0) -> dict:
  """Accuracy grid [len(lengths), len(depths)] of one retrieval task (see the module docstring)."""
  _template(task, style)
  if task == "multikey" and not 2 <= num_keys <= len(_WORDS):
    raise ValueError(f"num_keys must be in [2, {len(_WORDS)}], got {num_keys}")
  if any(not 0.0 <= d <= 1.0 for d in depths):
    raise ValueError(f"depths must lie in [0, 1], got {list(depths)}")
  rng = np.random.default_rng([seed, TASKS.index(task)])
  grid = {k: np.zeros((len(lengths), len(depths))) for k in
          ("accuracy", "token_accuracy", "answer_logprob")}
  for i, t in enumerate(lengths):
    samples = [(j, *_sample(tokenizer, haystack, int(t), float(d), task, style, num_keys, rng))
               for j, d in enumerate(depths) for _ in range(num_samples)]
    tokens = np.stack([s[1] for s in samples])
    logits = _batched_logits(logits_fn, tokens[:, :-1], batch_size)
    for row, (j, _, a0, n) in enumerate(samples):
      # logits[p] predicts token p + 1: the answer tokens a0..a0+n-1 come from a0-1..a0+n-2.
      lp = _log_softmax(logits[row, a0 - 1:a0 - 1 + n])
      target = tokens[row, a0:a0 + n]
      hit = lp.argmax(-1) == target
      grid["accuracy"][i, j] += float(hit.all()) / num_samples
      grid["token_accuracy"][i, j] += float(hit.mean()) / num_samples
      grid["answer_logprob"][i, j] += float(lp[np.arange(n), target].sum()) / num_samples
  return {"task": task, "style": style, "lengths": [int(t) for t in lengths],
          "depths": [float(d) for d in depths], "num_samples": int(num_samples),
          **({"num_keys": int(num_keys)} if task == "multikey" else {}),
          **{k: v.tolist() for k, v in grid.items()}}


def tables(results: dict) -> str:
  """Markdown tables: loss by position bucket and each retrieval task's accuracy grid."""
  lines = []
  pp = results.get("position_perplexity")
  if pp:
    lens = sorted(pp["lengths"], key=int)
    longest = pp["lengths"][lens[-1]]
    lines += [f"loss (nats/token) by target position, bucket {pp['bucket']}", "",
              "| position | " + " | ".join(f"T={t}" for t in lens) + " |",
              "|---" * (len(lens) + 1) + "|"]
    for j, start in enumerate(longest["start"]):
      cells = [f"{pp['lengths'][t]['loss'][j]:.3f}" if j < len(pp["lengths"][t]["loss"]) else ""
               for t in lens]
      lines.append(f"| {start} | " + " | ".join(cells) + " |")
    lines.append("")
  for name, r in results.get("retrieval", {}).items():
    lines += [f"{name}: exact-match accuracy (token accuracy), {r['num_samples']} samples a cell",
              "", "| length \\ depth | " + " | ".join(f"{d:.0%}" for d in r["depths"]) + " |",
              "|---" * (len(r["depths"]) + 1) + "|"]
    for i, t in enumerate(r["lengths"]):
      lines.append(f"| {t} | " + " | ".join(
          f"{a:.2f} ({ta:.2f})" for a, ta in zip(r["accuracy"][i], r["token_accuracy"][i])) + " |")
    lines.append("")
  return "\n".join(lines)


def draw(results: dict, out_path: str) -> str:
  """Position-loss curves and one (length x depth) heatmap per retrieval task; returns the path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = list(results.get("retrieval", {}).items())
  fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4.2 * (1 + len(tasks)), 3.6),
                           squeeze=False)
  ax = axes[0, 0]
  pp = results.get("position_perplexity", {"lengths": {}})
  for t, r in sorted(pp["lengths"].items(), key=lambda kv: int(kv[0])):
    ax.plot(np.asarray(r["start"]) + pp["bucket"] / 2, r["loss"], marker=".", label=f"T={t}")
  train_len = results.get("train_seq_len")
  if train_len:
    ax.axvline(train_len, color="gray", ls=":", lw=1, label="train length")
  ax.set_xlabel("target position")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title("Held-out loss by position", fontsize=9)
  ax.legend(fontsize=7)
  for ax, (name, r) in zip(axes[0, 1:], tasks):
    acc = np.asarray(r["token_accuracy"])
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(r["depths"])), [f"{d:.0%}" for d in r["depths"]], fontsize=7)
    ax.set_yticks(range(len(r["lengths"])), r["lengths"], fontsize=7)
    for i in range(acc.shape[0]):
      for j in range(acc.shape[1]):
        ax.text(j, i, f"{r['accuracy'][i][j]:.2f}", ha="center", va="center", fontsize=6,
                color="w" if acc[i, j] < 0.6 else "k")
    ax.set_xlabel("needle depth")
    ax.set_ylabel("context length")
    ax.set_title(f"{name}: token acc. (cell: exact match)", fontsize=9)
  if tasks:
    fig.colorbar(im, ax=axes[0, 1:].tolist(), fraction=0.03)
  fig.savefig(out_path, dpi=130, bbox_inches="tight")
  plt.close(fig)
  return out_path
