"""The ``autoprune`` command: the click group and its commands (search, status, pareto, select, evaluate,
retrain, report, dashboard), and the installed entry point."""

from __future__ import annotations

import sys
import warnings

import click

from autoprune.cli.deliver_commands import dashboard, report, retrain
from autoprune.cli.search_command import search
from autoprune.cli.study_commands import evaluate, pareto, select_cmd, status

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")


@click.group()
@click.version_option(package_name="autoprune")
def main() -> None:
    """Automated structured-pruning search for PyTorch image classifiers."""


for _command in (search, status, pareto, select_cmd, evaluate, retrain, report, dashboard):
    main.add_command(_command)


TRAINING_COMMANDS = ("search", "retrain")  # run for minutes: worth a restart with huge pages


def entry() -> None:
    """The ``autoprune`` command as installed: :func:`main`, for a training command with large CPU tensors on huge
    pages (:mod:`autoprune.cli.huge_pages`, which may start the program again first: a second ``import torch``, so
    the quick commands skip it)."""
    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        from autoprune.cli.huge_pages import restart_with_huge_pages

        restart_with_huge_pages()
    main()
