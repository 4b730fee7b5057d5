"""The command line under bad input and failure: one line on stderr and the documented exit
status, never a hang, and a workdir left as it was when a launch is refused."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from configs.icl import linear_regression as lr_config
from jaxllm import main as launcher
from jaxllm.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/icl/linear_regression.py:tiny"
PROGRESS = re.compile(r"^step \d+/\d+ ")


def _unprivileged() -> list[str]:
  """A command prefix under which file permissions apply (root ignores them otherwise)."""
  if os.geteuid() != 0:
    return []
  if shutil.which("setpriv") is None:
    pytest.skip("running as root without setpriv: permission errors cannot be provoked")
  return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _snapshot(path: str) -> dict | None:
  """Every file under ``path`` with its bytes (None if ``path`` does not exist)."""
  if not os.path.exists(path):
    return None
  out = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), path) + "/"] = None
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


# ---------------------------------------------------------------------------------------------
# The table: every case is refused with exit 2, one line naming the field, workdir untouched.

@pytest.fixture(scope="module")
def table(tmp_path_factory):
  base = tmp_path_factory.mktemp("cli")
  existing = str(base / "existing")  # a finished 6-step tiny run
  config = lr_config.get_config("tiny")
  config.train.update(steps=6, checkpoint_every=6, log_every=3)
  config.eval.num_prompts = 8
  launcher.launch(config, existing)
  (base / "syntax.py").write_text("def get_config(arg=None):\n  return (\n")
  (base / "noget.py").write_text("import ml_collections\nCONFIG = 1\n")
  (base / "afile").write_text("not a directory\n")
  readonly = base / "readonly"
  readonly.mkdir()
  readonly.chmod(0o555)
  fresh = str(base / "fresh")
  busy = str(base / "busy")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom jaxllm.train import workdir\n"
       "with workdir.lock(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(600)\n", busy],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    cases = {
        "missing config file": ([f"--config={base}/nope.py", f"--workdir={fresh}"], "nope.py",
                                fresh),
        "syntax error": ([f"--config={base}/syntax.py", f"--workdir={fresh}"], "syntax.py line",
                         fresh),
        "no get_config": ([f"--config={base}/noget.py", f"--workdir={fresh}"], "get_config",
                          fresh),
        "unknown :arg": (["--config=configs/icl/linear_regression.py:huge",
                          f"--workdir={fresh}"], "unknown arg 'huge'", fresh),
        "unknown field": ([TINY, "--config.train.stepz=3", f"--workdir={existing}"],
                          "train.stepz", existing),
        "unknown section": ([TINY, "--config.trian.steps=3", f"--workdir={fresh}"], "trian", fresh),
        "not an int": ([TINY, "--config.train.steps=abc", f"--workdir={fresh}"],
                       "config.train.steps", fresh),
        "unknown flag": ([TINY, "--bogus=1", f"--workdir={fresh}"], "bogus", fresh),
        "positional argument": ([TINY, "extra", f"--workdir={fresh}"], "extra", fresh),
        "workdir is a file": ([TINY, f"--workdir={base}/afile"], "afile is a file",
                              str(base / "afile")),
        "workdir under a file": ([TINY, f"--workdir={base}/afile/run"], "is a file",
                                 str(base / "afile")),
        "workdir not writable": ([TINY, f"--workdir={readonly}/run"], "permission denied",
                                 str(readonly)),
        "batch_size 0": ([TINY, "--config.train.batch_size=0", f"--workdir={fresh}"],
                         "train.batch_size", fresh),
        "batch_size -4": ([TINY, "--config.train.batch_size=-4", f"--workdir={existing}"],
                          "train.batch_size", existing),
        "checkpoint_every -1": ([TINY, "--config.train.checkpoint_every=-1",
                                 f"--workdir={fresh}"], "train.checkpoint_every", fresh),
        "steps 0": ([TINY, "--config.train.steps=0", f"--workdir={existing}"], "train.steps",
                    existing),
        "negative learning rate": ([TINY, "--config.optimizer.learning_rate=-0.1",
                                    f"--workdir={fresh}"], "optimizer.learning_rate", fresh),
        "nan learning rate": ([TINY, "--config.optimizer.learning_rate=nan",
                               f"--workdir={fresh}"], "optimizer.learning_rate", fresh),
        "negative task field": ([TINY, "--config.task.n_dims=-1", f"--workdir={fresh}"],
                                "task.n_dims", fresh),
        # num_kv_heads defaults to None, yet the command line sets it (the model rejects 3).
        "num_kv_heads": ([TINY, "--config.model.num_kv_heads=3", f"--workdir={fresh}"],
                         "model.num_kv_heads=3", fresh),
        "unknown experiment": ([TINY, "--config.experiment=icl.nope", f"--workdir={fresh}"],
                               "config.experiment", fresh),
        "other d_model on an existing workdir": (
            [TINY, "--config.model.d_model=64", f"--workdir={existing}"], "model.d_model",
            existing),
        "busy workdir": ([TINY, f"--workdir={busy}"], f"in use by pid {holder.pid}", busy),
    }
    before = {name: _snapshot(case[2]) for name, case in cases.items()}
    spec = [{"argv": case[0], "stderr": str(base / f"{i}.err")}
            for i, case in enumerate(cases.values())]
    (base / "cases.json").write_text(json.dumps(spec))
    proc = subprocess.run([*_unprivileged(), sys.executable, os.path.join(ROOT, "tests",
                                                                          "cli_runner.py"),
                           str(base / "cases.json")], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {}
    for (name, case), code, s in zip(cases.items(), codes, spec):
      with open(s["stderr"]) as f:
        out[name] = (code, f.read(), case[1], before[name], _snapshot(case[2]))
    return out
  finally:
    holder.kill()
    holder.wait()


CASES = ["missing config file", "syntax error", "no get_config", "unknown :arg", "unknown field",
         "unknown section", "not an int", "unknown flag", "positional argument",
         "workdir is a file", "workdir under a file", "workdir not writable", "batch_size 0",
         "batch_size -4", "checkpoint_every -1", "steps 0", "negative learning rate",
         "nan learning rate", "negative task field", "num_kv_heads", "unknown experiment",
         "other d_model on an existing workdir", "busy workdir"]


@pytest.mark.parametrize("name", CASES)
def test_bad_command_line_exits_2_with_one_line_and_changes_nothing(table, name):
  code, stderr, field, before, after = table[name]
  lines = stderr.splitlines()
  assert code == 2, stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
  assert field in lines[0]
  assert after == before  # same files, same bytes (a fresh workdir is still absent)


# ---------------------------------------------------------------------------------------------
# Failures while running, provoked in a child process.

def _cli(*args, prefix=(), timeout=240):
  return subprocess.run([*prefix, sys.executable, "-m", "jaxllm.main", *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=timeout)


def test_unwritable_checkpoint_dir_fails_fast_with_one_line(tmp_path):
  # Orbax's asynchronous saves used to keep the process alive for minutes after this failure;
  # the timeout turns a hang into a test failure.
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "checkpoints").chmod(0o555)
  proc = _cli(TINY, f"--workdir={workdir}", "--config.train.steps=3",
              "--config.train.checkpoint_every=1", "--config.optimizer.warmup_steps=0",
              prefix=_unprivileged())
  lines = [l for l in proc.stderr.splitlines() if not PROGRESS.match(l)]
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: could not write checkpoint step 1 to ")
  assert str(workdir / "checkpoints") in lines[0] and "Permission denied" in lines[0]
  assert os.listdir(workdir / "checkpoints") == []
  assert not (workdir / workdir_lib.LOCK_NAME).exists()


class _Child:
  """A CLI run whose stderr is read line by line as it comes."""

  def __init__(self, *args):
    self.proc = subprocess.Popen([sys.executable, "-m", "jaxllm.main", *args], cwd=ROOT,
                                 env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line.rstrip("\n"))

  def wait_for(self, pattern, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if any(re.search(pattern, l) for l in self.lines):
        return
      if self.proc.poll() is not None:
        break
      time.sleep(0.05)
    self.proc.kill()
    raise AssertionError(f"no line matching {pattern!r}: {self.lines[-20:]}")

  def finish(self, timeout=120):
    code = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return code


def _run_until_signalled(workdir, signum):
  child = _Child(TINY, f"--workdir={workdir}", "--config.train.steps=100000",
                 "--config.train.log_every=1", "--config.train.checkpoint_every=0")
  child.wait_for(r"^step \d+/100000 ")  # training has started (or resumed)
  child.proc.send_signal(signum)
  code = child.finish()
  others = [l for l in child.lines if not PROGRESS.match(l) and not l.startswith("resumed from")]
  return code, others, child.lines


def test_sigterm_and_sigint_save_the_current_step_and_exit_with_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  code, others, _ = _run_until_signalled(workdir, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM
  (line,) = others
  m = re.fullmatch(r"stopped by SIGTERM at step (\d+)/100000; checkpoint saved at step (\d+) in "
                   r"(.*); run the same command again to resume", line)
  assert m and m.group(1) == m.group(2) and m.group(3) == workdir, line
  saved = int(m.group(1))
  assert saved >= 1
  with open(os.path.join(workdir, "checkpoints", str(saved), "meta", "metadata")) as f:
    assert json.load(f)["step"] == saved

  code, others, lines = _run_until_signalled(workdir, signal.SIGINT)
  assert f"resumed from checkpoint at step {saved} in {workdir}" in lines
  assert code == 128 + signal.SIGINT
  (line,) = others
  m = re.fullmatch(r"stopped by SIGINT at step (\d+)/100000; checkpoint saved at step \1 in .*",
                   line)
  assert m and int(m.group(1)) > saved, line
  assert os.path.isdir(os.path.join(workdir, "checkpoints", m.group(1)))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def test_lock_of_a_killed_run_does_not_block(tmp_path):
  workdir = str(tmp_path / "w")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom jaxllm.train import workdir\n"
       "with workdir.lock(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(600)\n",
       workdir], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(workdir_lib.WorkdirBusyError, match=f"in use by pid {holder.pid} on host"):
    with workdir_lib.lock(workdir):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  lock_file = os.path.join(workdir, workdir_lib.LOCK_NAME)
  with open(lock_file) as f:
    assert json.load(f)["pid"] == holder.pid  # the killed run's lock file is still there
  with workdir_lib.lock(workdir):
    with open(lock_file) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert not os.path.exists(lock_file)


def test_lock_without_flock_falls_back_to_a_pid_check(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  import fcntl  # pylint: disable=g-import-not-at-top

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  workdir = tmp_path / "w"
  workdir.mkdir()
  lock_file = workdir / workdir_lib.LOCK_NAME
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_file.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
  with workdir_lib.lock(str(workdir)):  # a dead holder on this host: stale
    pass
  lock_file.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
  with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getppid()}"):
    with workdir_lib.lock(str(workdir)):
      pass


@pytest.mark.slow
def test_second_run_on_a_busy_workdir_is_refused_and_the_first_finishes(tmp_path):
  workdir = str(tmp_path / "run")
  first = _Child(TINY, f"--workdir={workdir}", "--config.train.steps=60",
                 "--config.train.log_every=1", "--config.train.checkpoint_every=5")
  first.wait_for(r"^step 2/60 ")
  second = _cli(TINY, f"--workdir={workdir}", timeout=120)
  assert second.returncode == 2
  (line,) = second.stderr.splitlines()
  assert f"is in use by pid {first.proc.pid}" in line
  assert first.finish(timeout=600) == 0, first.lines[-20:]
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["train_steps"] == 60
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["55", "60"]


@pytest.mark.parametrize("module, argv, word", [
    ("jaxllm.data.tokenizer", ["train", "--vocab_size=abc"], "--vocab_size"),
    ("jaxllm.data.text", ["build", "--eval_fraction=x"], "--eval_fraction"),
    ("jaxllm.eval.attention_fidelity", ["--bogus=1"], "bogus"),
    ("jaxllm.inference.cost_model", ["--batch=0"], "--batch"),
])
def test_every_absl_command_line_gives_one_line_and_exit_2_on_a_bad_flag(module, argv, word):
  proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and word in lines[0], proc.stderr
