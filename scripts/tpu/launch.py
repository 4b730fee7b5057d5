"""TPU VM launcher: the gcloud commands for one jaxllm run on every worker of a TPU VM.

    python scripts/tpu/launch.py --action=create --name=jaxllm-v5e --zone=us-west4-a \
        --project=my-project --accelerator=v5litepod-8 --version=v2-alpha-tpuv5-lite
    python scripts/tpu/launch.py --action=setup  --name=jaxllm-v5e --zone=... --project=...
    python scripts/tpu/launch.py --action=run    --name=jaxllm-v5e --zone=... --project=... \
        --config=configs/lm_efficiency.py --workdir=gs://my-bucket/runs/lm
    python scripts/tpu/launch.py --action=logs   --name=jaxllm-v5e --zone=... --project=...
    python scripts/tpu/launch.py --action=delete --name=jaxllm-v5e --zone=... --project=...

``--dry_run`` prints the commands instead of running them (the tests compare that output with
golden files in ``tests/data/tpu/``). ``setup`` copies the current checkout (``git archive`` of
HEAD) to every worker and installs it with ``scripts/setup.sh tpu``; ``run`` starts the launcher on
every worker in the background with ``JAXLLM_DISTRIBUTED=1`` so each process calls
``jax.distributed.initialize()``; ``logs`` tails worker 0's log. Commands follow the gcloud
``compute tpus tpu-vm`` reference (create / scp / ssh --worker=all / delete).
"""

import os
import shlex
import subprocess
import sys

from absl import flags

from jaxllm import cli

ACTIONS = ("create", "setup", "run", "logs", "delete")
ARCHIVE = "/tmp/jaxllm_src.tar.gz"
REMOTE_DIR = "jaxllm"
LOG = "run.log"

_ACTION = flags.DEFINE_enum("action", None, ACTIONS, "What to do.")
_NAME = flags.DEFINE_string("name", None, "TPU VM name.")
_ZONE = flags.DEFINE_string("zone", None, "Zone, e.g. us-west4-a.")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project id.")
_ACCELERATOR = flags.DEFINE_string("accelerator", "v5litepod-8", "Accelerator type (create).")
_VERSION = flags.DEFINE_string("version", "v2-alpha-tpuv5-lite", "TPU VM software version (create).")
_CONFIG = flags.DEFINE_string("config", "configs/icl/linear_regression.py:smoke",
                              "Config file[:arg], relative to the checkout (run).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tpu", "Workdir on the VM or a gs:// path (run).")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.x=y flags (run).")
_LOG_LINES = flags.DEFINE_integer("log_lines", 100, "Lines of the log to show (logs).", lower_bound=1)
_PYTHON = flags.DEFINE_string("python", "python3.12",
                             "Python 3.12 on the VM, handed to scripts/setup.sh (setup).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")


def _tpu(verb: str, *args: str, zone: str, project: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={zone}",
          f"--project={project}"]


def _ssh(name, zone, project, command: str, worker: str = "all") -> list[str]:
  return _tpu("ssh", name, zone=zone, project=project) + [f"--worker={worker}",
                                                          f"--command={command}"]


def commands(action: str, *, name: str, zone: str, project: str, accelerator: str,
             version: str, config: str, workdir: str, overrides=(), log_lines: int = 100,
             python: str = "python3.12") -> list[list[str]]:
  """The argv lists ``action`` runs, in order. Pure: no gcloud call, no file access."""
  for field, value in (("name", name), ("zone", zone), ("project", project)):
    if not value:
      raise ValueError(f"--{field} is required")
  if action not in ACTIONS:
    raise ValueError(f"--action must be one of {list(ACTIONS)}, got {action!r}")
  if action == "create":
    return [_tpu("create", name, zone=zone, project=project)
            + [f"--accelerator-type={accelerator}", f"--version={version}"]]
  if action == "setup":
    install = (f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && "
               f"tar xzf {os.path.basename(ARCHIVE)} -C {REMOTE_DIR} && "
               f"cd {REMOTE_DIR} && PYTHON={shlex.quote(python)} bash scripts/setup.sh tpu")
    return [["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
            _tpu("scp", ARCHIVE, f"{name}:~/", zone=zone, project=project) + ["--worker=all"],
            _ssh(name, zone, project, install)]
  if action == "run":
    argv = [".venv/bin/python", "-m", "jaxllm.main", f"--config={config}",
            f"--workdir={workdir}", *overrides]
    run = (f"cd {REMOTE_DIR} && JAXLLM_DISTRIBUTED=1 nohup {shlex.join(argv)} > {LOG} 2>&1 &")
    return [_ssh(name, zone, project, run)]
  if action == "logs":
    return [_ssh(name, zone, project, f"tail -n {log_lines} {REMOTE_DIR}/{LOG}", worker="0")]
  return [_tpu("delete", name, zone=zone, project=project) + ["--quiet"]]


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  try:
    cmds = commands(_ACTION.value, name=_NAME.value, zone=_ZONE.value, project=_PROJECT.value,
                    accelerator=_ACCELERATOR.value, version=_VERSION.value, config=_CONFIG.value,
                    workdir=_WORKDIR.value, overrides=_OVERRIDES.value,
                    log_lines=_LOG_LINES.value, python=_PYTHON.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for cmd in cmds:
    if _DRY_RUN.value:
      print(shlex.join(cmd))
      continue
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    status = subprocess.call(cmd)
    if status:
      print(f"error: command failed with status {status}: {cmd[0]} {' '.join(cmd[1:5])}",
            file=sys.stderr)
      return status
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("action")
  cli.run(main)
