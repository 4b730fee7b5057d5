"""CI runs the README's test command: the second line of its opening code block."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_test_command():
  readme = (ROOT / "README.md").read_text()
  block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
  assert len(block) == 2, block
  ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))]
  assert ci == [block[1]]
