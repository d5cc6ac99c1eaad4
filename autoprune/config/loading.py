"""Loading a study: its YAML read and validated (one ConfigError naming the file and the dotted field), the
search space it names, ``--set`` overrides, and the loaded :class:`Study` with its fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autoprune.config.base import DIRECTIONS
from autoprune.config.space import SearchSpaceConfig
from autoprune.config.study import StudyConfig
from autoprune.errors import ConfigError
from autoprune.pareto import Direction


class Study:
    """A loaded study: the validated config, its search space and where its files live.

    Example:
        >>> study = load_study("studies/quickstart.yaml")  # doctest: +SKIP
        >>> study.config.budget.n_trials  # doctest: +SKIP
        24
    """

    def __init__(self, config: StudyConfig, space: SearchSpaceConfig, path: Path | None, space_path: Path | None):
        self.config = config
        self.space = space
        self.path = path
        self.space_path = space_path

    @property
    def workdir(self) -> Path:
        return Path(self.config.workdir or f"runs/{self.config.name}")

    @property
    def study_name(self) -> str:
        return self.config.storage.study_name or self.config.name

    @property
    def storage_url(self) -> str:
        if self.config.storage.url:
            return self.config.storage.url
        return f"sqlite:///{(self.workdir / 'study.db').as_posix()}"

    @property
    def directions(self) -> list[Direction]:
        return [DIRECTIONS[m] for m in self.config.objectives]

    def _defining(self) -> dict[str, Any]:
        return {
            "model": self.config.model.model_dump(exclude={"checkpoint"}),
            "data": self.config.data.model_dump(exclude={"root"}),
            # allocation settings mean something only with targets: a study without them keeps the fingerprint it
            # had before they existed, so it resumes
            "space": _without_defaults(self.space.model_dump(exclude=None if self.config.targets else {"allocation"}),
                                       _ADDED_SPACE),
            "objectives": self.config.objectives,
            # precision counts only when set: studies from before it keep their fingerprint ("auto" follows the device)
            "recovery": self.config.recovery.model_dump(exclude={"precision"} if self.config.recovery.precision == "auto"
                                                        else None),
            # settings added since (bn_rung, min_distance) count only when set, so older studies keep their fingerprint
            "fidelity": _without_defaults(self.config.fidelity.model_dump(), _ADDED_FIDELITY),
            **({"targets": _without_defaults(self.config.targets.model_dump(exclude_none=True), _ADDED_TARGETS)}
               if self.config.targets else {}),
        }

    def fingerprint(self) -> str:
        """A hash of everything that defines what a trial means (not the budget or the storage)."""
        return _digest(self._defining())

    def fingerprint_parts(self) -> dict[str, str]:
        """One hash per part of :meth:`fingerprint`, so a mismatch can say which part differs."""
        return {key: _digest(value) for key, value in self._defining().items()}


# Settings added after studies were stored, with their defaults: left out of a fingerprint while at the default,
# so a study stored before they existed resumes (tests/test_record.py: a legacy study).
_ADDED_SPACE = {("warm_start", "anchors"): []}
_ADDED_FIDELITY = {("bn_rung",): False, ("min_distance",): 0.0}
_ADDED_TARGETS = {("balance",): False}


def _without_defaults(dump: dict[str, Any], added: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """``dump`` less each ``added`` setting (a path of keys) that holds its default.

    >>> _without_defaults({"a": 1, "w": {"x": [], "y": 2}}, {("w", "x"): [], ("a",): 0})
    {'a': 1, 'w': {'y': 2}}
    """
    for path, default in added.items():
        parent = dump
        for key in path[:-1]:
            parent = parent.get(key, {})
        if path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    return dump


def _digest(blob: Any) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# pydantic names the member of a union in an error's location: "recovery.lr.ChoiceParam.choices", or
# "recovery.lr.function-after[_order(), RangeParam]" for a model with a validator
_UNION_TAGS = {"float", "int", "str", "RangeParam", "ChoiceParam"}


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or part.startswith("function-"))
_WRONG_KIND = {"float_type", "int_type", "string_type", "model_type", "model_attributes_type"}


def _union_error(errors: list[Any]) -> Any:
    """Of the errors a union gives (one set per member), the member's the input was most likely meant for:
    not of the wrong kind, fewest errors, deepest location."""
    first = errors[0]
    at = next((i for i, part in enumerate(first["loc"]) if _is_tag(part)), None)
    if at is None:
        return first
    members: dict[str, list[Any]] = {}
    for e in errors:
        if tuple(e["loc"][:at]) == tuple(first["loc"][:at]) and len(e["loc"]) > at and _is_tag(e["loc"][at]):
            members.setdefault(e["loc"][at], []).append(e)
    ranked = sorted(members.values(), key=lambda es: (all(e["type"] in _WRONG_KIND for e in es), len(es),
                                                     -max(len(e["loc"]) for e in es)))
    return ranked[0][0]


def _format_validation(err: ValidationError) -> tuple[str, str]:
    first = _union_error(err.errors())
    field = ".".join(str(p) for p in first["loc"] if not _is_tag(p)) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif "input" in first and first["type"] not in ("value_error",):
        msg = f"{msg} (got {first['input']!r})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return field, msg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", source=str(path))
    return data


def parse_search_space(data: dict[str, Any], source: str = "<search space>") -> SearchSpaceConfig:
    try:
        return SearchSpaceConfig.model_validate(data)
    except ValidationError as err:
        field, msg = _format_validation(err)
        raise ConfigError(msg, source=source, field=field) from None


def load_search_space(path: str | Path) -> SearchSpaceConfig:
    path = Path(path)
    return parse_search_space(_read_yaml(path), source=str(path))


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Load and validate a study file and the search space it names.

    Args:
        path: the study YAML.
        overrides: dotted keys to set before validation, e.g. ``{"model.checkpoint": "w.pt"}`` (CLI flags).

    Raises:
        ConfigError: naming the file and field of the first problem.
    """
    path = Path(path)
    data = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            if not isinstance(node[key], dict):
                raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping", source=str(path), field=dotted)
            node = node[key]
        node[leaf] = value
    config = _validate(data, str(path))
    space_path = Path(config.search_space)
    if not space_path.is_absolute():
        candidate = path.parent / space_path
        space_path = candidate if candidate.is_file() else space_path
    if not space_path.is_file():
        raise ConfigError(f"search space file {config.search_space!r} not found", source=str(path), field="search_space")
    space = load_search_space(space_path)
    _check_combination(config, space, str(space_path))
    return Study(config, space, path, space_path)


PYTHON_SOURCE = "autoprune.search"  # where a study built in Python says its mistakes are


def study_from_settings(data: dict[str, Any], space: dict[str, Any] | SearchSpaceConfig | None) -> Study:
    """A study built from Python settings (``autoprune.search``): the study file's models and messages, with
    ``given:`` names accepted for the objects handed over, and the search space a dict (or a validated one)."""
    config = _validate(data, PYTHON_SOURCE, given=True)
    if not isinstance(space, SearchSpaceConfig):
        space = parse_search_space(space or {}, source=f"{PYTHON_SOURCE}(space=...)")
    _check_combination(config, space, f"{PYTHON_SOURCE}(space=...)")
    return Study(config, space, None, None)


def _validate(data: dict[str, Any], source: str, given: bool = False) -> StudyConfig:
    try:
        return StudyConfig.model_validate(data, context={"given": given})
    except ValidationError as err:
        field, msg = _format_validation(err)
        raise ConfigError(msg, source=source, field=field) from None


def _check_combination(config: StudyConfig, space: SearchSpaceConfig, source: str) -> None:
    if config.targets and space.depth is not None:
        raise ConfigError("cost targets cannot be combined with depth pruning yet (the cost model is of the model "
                          "without dropped blocks); remove 'depth' or the study's 'targets'", source=source,
                          field="depth")
