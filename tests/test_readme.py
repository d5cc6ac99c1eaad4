"""The README and docs/ are run-checked: their commands, links, files and examples must be real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", flags=re.S)


def _blocks(page: Path, lang: str | None = None) -> list[str]:
    """The fenced code blocks of ``page`` (only those of language ``lang`` when given)."""
    return [body for kind, body in FENCE.findall(page.read_text()) if lang is None or kind == lang]


def _commands() -> list[str]:
    blocks = _blocks(ROOT / "README.md", "bash")
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_main_job_and_test_commands():
    main_job, tests = _commands()
    assert main_job.endswith("autoprune search studies/quickstart.yaml")
    assert "pip install -e ." in main_job
    assert "pip install -e '.[test]'" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_is_at_most_170_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 170


def test_architecture_page_names_every_module_of_the_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.relative_to(ROOT / "autoprune").as_posix() for p in (ROOT / "autoprune").rglob("*.py")
               if p.name != "__init__.py" and p.name not in text]
    assert missing == [], f"docs/architecture.md does not mention {missing}"
    assert "TrialRecord" in text and "run_trial" in text and "ask_tell.py" in text


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    assert _broken_links(page) == []


def _command_lines(page: Path) -> list[str]:
    """``autoprune ...`` lines of every code block: backslash and indented continuations joined first."""
    lines = []
    for block in _blocks(page):
        for line in block.replace("\\\n", " ").splitlines():
            if line[:1].isspace() and lines and lines[-1].startswith("autoprune "):
                lines[-1] += " " + line.strip()
            else:
                lines += [part.strip() for part in line.split("&&") if part.strip().startswith("autoprune ")]
    return lines


def _unknown(line: str) -> str | None:
    """What in one command line is not a real subcommand or option of it (None: all real)."""
    from autoprune.cli import main

    words = [w.strip("[]()") for w in shlex.split(line, comments=True)]
    if words[1] not in main.commands:
        return f"no subcommand {words[1]!r}"
    opts = {o for p in main.commands[words[1]].params for o in (*p.opts, *p.secondary_opts)}
    flags = [w.split("=", 1)[0] for w in words[2:] if w.startswith("--") and not re.fullmatch(r"<.*>|\.\.\.", w)]
    bad = [f for f in flags if f not in opts]
    return f"{words[1]} has no option {bad}" if bad else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_names_a_real_subcommand_and_real_options(page):
    problems = {line: _unknown(line) for line in _command_lines(page)}
    assert {k: v for k, v in problems.items() if v} == {}


def test_every_study_and_search_space_named_in_the_docs_exists():
    pattern = r"(?:benchmarks/)?(?:studies|search_spaces)/[\w.-]+\.yaml"  # benchmark-only studies live in benchmarks/
    named = {m for page in PAGES for m in re.findall(pattern, page.read_text())}
    assert named and sorted(p for p in named if not (ROOT / p).is_file()) == []


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_loads(path):
    from autoprune.config import load_study

    assert load_study(path).config.name == path.stem


def test_study_page_examples_are_valid_study_and_search_space_files():
    from autoprune.config import SearchSpaceConfig, StudyConfig

    study, space = (yaml.safe_load(b) for b in _blocks(ROOT / "docs" / "studies.md", "yaml")[:2])
    StudyConfig.model_validate(study)
    SearchSpaceConfig.model_validate(space)


def _field_names(model) -> set[str]:
    """Every field name of a config model and of the models inside it (``X | None`` included)."""
    names = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for inner in (field.annotation, *get_args(field.annotation)):
            names |= _field_names(inner) if isinstance(inner, type) and issubclass(inner, BaseModel) else set()
    return names


def test_study_page_names_every_study_field():
    from autoprune.config import SearchSpaceConfig, StudyConfig

    text = (ROOT / "docs" / "studies.md").read_text()
    fields = _field_names(StudyConfig) | _field_names(SearchSpaceConfig)
    missing = [n for n in fields if not re.search(rf"\b{n}\b", text)]
    assert missing == []


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/python-api.md"])
def test_python_examples_run(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    for block in _blocks(ROOT / page, "python"):
        exec(compile(block, page, "exec"), {})
