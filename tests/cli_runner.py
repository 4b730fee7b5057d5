"""Runs ``python -m jaxllm.main`` once per argv list, each in a forked child of one process.

Usage: ``python tests/cli_runner.py CASES.json`` where CASES.json is a list of
``{"argv": [...], "stderr": path}``; prints a JSON list of exit codes. Importing jax, flax,
orbax and the experiments once and forking for each case makes a table of a few dozen bad
command lines cost seconds instead of minutes, while each case still goes through the real
flag parsing, ``sys.exit`` and stderr of the command line.
"""

import json
import os
import sys

import jaxllm.main  # pylint: disable=unused-import  (imported before forking, once)
import experiments.icl.linear_regression  # pylint: disable=unused-import


def _child(argv, stderr_path):
  fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  os.dup2(fd, 2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  sys.argv = ["jaxllm.main", *argv]
  code = 0
  try:
    jaxllm.main.run_cli()
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 1
  sys.stderr.flush()
  os._exit(code)


def main():
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  codes = []
  for case in cases:
    pid = os.fork()
    if pid == 0:
      _child(case["argv"], case["stderr"])
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
  print(json.dumps(codes))


if __name__ == "__main__":
  main()
