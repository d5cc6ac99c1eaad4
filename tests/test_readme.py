from __future__ import annotations

import re

from tests.conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_main_job_and_test_commands():
    main_job, tests = _commands()
    assert main_job.endswith("autoprune search studies/quickstart.yaml")
    assert "pip install -e ." in main_job
    assert "pip install -e '.[test]'" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_layout_names_every_module_of_the_package():
    text = (ROOT / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("## ", 1)[0]
    missing = [p.relative_to(ROOT / "autoprune").as_posix() for p in (ROOT / "autoprune").rglob("*.py")
               if p.name != "__init__.py" and p.name not in layout]
    assert missing == [], f"README's Layout does not mention {missing}"
    assert "## Architecture" in text and "TrialRecord" in text.split("## Architecture", 1)[1]
