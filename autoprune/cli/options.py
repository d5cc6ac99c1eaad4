"""What every command shares: the study options, ``--set`` overrides, and errors as one line with an exit code
(0 success, 2 bad input naming what was wrong, 1 other failure, 130 interrupted)."""

from __future__ import annotations

import functools
import shlex
import sys
from typing import Any, Callable

import click

from autoprune.errors import AutopruneError, first_line


def fail(msg: str, code: int) -> None:
    click.echo(f"autoprune: error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutopruneError as exc:
            if debug:
                raise
            fail(exc.one_line(), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:  # a bug or an environment problem: one line unless --debug
            if debug:
                raise
            fail(f"{first_line(exc)} (run with --debug for the traceback)", 1)

    return wrapper


def study_options(fn: Callable) -> Callable:
    for opt in reversed([
        click.argument("study_file", type=click.Path(dir_okay=False)),
        click.option("--storage", envvar="AUTOPRUNE_STORAGE", show_envvar=True,
                     help="Optuna storage URL (default: SQLite file in the study's folder). A URL with a password is "
                          "best given through the environment, or PostgreSQL's PGPASSWORD / ~/.pgpass, not argv."),
        click.option("--study-name", help="Study name in the storage (default: the study file's name)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), help="Base model state_dict (overrides the study)."),
        click.option("--data-root", type=click.Path(), help="Data folder (overrides the study)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override a study field, e.g. --set recovery.steps=20 (repeatable)."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]):
        fn = opt(fn)
    return fn


def load_study_from_flags(study_file: str, checkpoint: str | None, data_root: str | None, storage: str | None = None,
          sets: tuple[str, ...] = (), study_name: str | None = None):
    import yaml

    from autoprune.config import load_study

    overrides: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise AutopruneError(f"--set expects KEY=VALUE, got {item!r}", field="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AutopruneError(f"--set {key}: value {value!r} is not a YAML scalar", field="--set") from None
    flags = {"model.checkpoint": checkpoint, "data.root": data_root, "storage.url": storage,
             "storage.study_name": study_name}
    overrides.update({key: value for key, value in flags.items() if value is not None})  # a flag not given keeps --set
    return load_study(study_file, overrides)


def sigterm_as_interrupt() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, the graceful stop. SIGINT too, explicitly: a process started
    in the background by a shell (``cmd &``, nohup, CI runners) inherits SIGINT *ignored*, and Python then never
    turns it into KeyboardInterrupt, so ``kill -INT`` of a ``--workers`` search would do nothing."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def resume_hint() -> str:
    """The command line that resumes, with any storage password masked."""
    from autoprune.engine.storage import display_url

    return "autoprune " + " ".join(shlex.quote(display_url(a) if "://" in a else a) for a in sys.argv[1:] if a)
