"""CI runs the README's test command: the second line of its opening code block."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_test_command():
  readme = (ROOT / "README.md").read_text()
  block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
  assert len(block) == 2, block
  assert block[1] == "bash scripts/setup.sh test && bash scripts/test.sh"
  commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
  # After the shell settings and the move to the checkout root, the one command is the README's.
  assert commands == ['set -eu', 'cd "$(dirname "$0")/.."', block[1]], commands
