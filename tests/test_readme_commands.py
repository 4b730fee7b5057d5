"""CI runs the README's test command: the second line of its opening code block."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_test_command():
  readme = (ROOT / "README.md").read_text()
  block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
  assert len(block) == 2, block
  assert block[1] == "bash scripts/setup.sh test && bash scripts/test.sh"
  ci = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True,
                      text=True, check=True)
  assert ci.stdout.strip() == block[1]
  run_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith(("#", "echo"))]
  assert block[1] in run_lines  # the command itself, not only its echo
