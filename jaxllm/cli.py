"""What every absl command line of jaxllm shares: a bad flag is one line and exit status 2.

absl exits 1 and prints a usage block on a flag it cannot parse; the project's command lines
promise one line naming the flag and status 2 for any bad input.
"""

import sys

from absl import app, flags


def parse_flags(argv):
  """absl's flag parsing, with parse errors as ``error: ...`` on one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def run(main):
  """``app.run(main)`` with :func:`parse_flags`; ``main``'s return value is the exit status."""
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


def fail(message) -> None:
  """Prints ``error: message`` on one line of stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def expect_command(argv, command: str, usage: str) -> None:
  """Exits 2 with ``usage`` unless the one positional argument is ``command``."""
  if len(argv) != 2 or argv[1] != command:
    print(f"usage: {usage}", file=sys.stderr)
    sys.exit(2)


def expect_no_arguments(argv) -> None:
  """Exits 2 naming any positional argument (the command takes flags only)."""
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")


def require(*names: str) -> None:
  """Exits 2 naming the first of the flags ``names`` left empty."""
  for name in names:
    if not flags.FLAGS[name].value:
      fail(f"--{name} is required")
