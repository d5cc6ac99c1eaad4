"""Opening a study's Optuna storage and study, and reading trials back in autoprune's terms."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config import DEFAULT_OBJECTIVES, Study
from autoprune.engine.record import TrialRecord
from autoprune.errors import AutopruneError, first_line

optuna.logging.set_verbosity(optuna.logging.ERROR)  # autoprune reports failed trials itself


@dataclass(frozen=True)
class StudyAttrs:
    """The study-level user attributes autoprune stores on an Optuna study, read once and typed.

    ``objectives``: the study's objectives in order (a study stored before they were: accuracy and MACs);
    ``fingerprint`` and ``fingerprints``: hashes of what defines a trial, whole and per part
    (:meth:`autoprune.config.Study.fingerprint`; None and {} for older studies); ``base``: the base model's
    reference measurements; ``hosts``: the machines whose workers joined; ``warm_started``: how many baselines
    were enqueued (None: not yet).
    """

    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    fingerprint: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    warm_started: int | None = None

    @classmethod
    def from_study(cls, ost: optuna.Study) -> StudyAttrs:
        a = ost.user_attrs  # one read of the storage
        return cls(tuple(a.get("objectives") or DEFAULT_OBJECTIVES), a.get("fingerprint"),
                   dict(a.get("fingerprints") or {}), dict(a.get("base") or {}), tuple(a.get("hosts") or ()),
                   a.get("warm_started"))


def display_url(url: str) -> str:
    """``url`` as it may be shown: a password replaced by ``***`` (SQLAlchemy renders it hidden).

    >>> display_url("postgresql://ann:s3cret@db.example/autoprune")
    'postgresql://ann:***@db.example/autoprune'
    >>> display_url("sqlite:///runs/quickstart/study.db")
    'sqlite:///runs/quickstart/study.db'
    """
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show it with anything after "//user:" hidden
        head, sep, rest = url.partition("://")
        user, at, host = rest.rpartition("@")
        return f"{head}{sep}{user.split(':')[0]}:***@{host}" if at and ":" in user else url


def open_storage(url: str, heartbeat: tuple[int, int, int] | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; an unreachable or malformed URL is a one-line error.

    Args:
        heartbeat: ``(interval, grace_period, max_retry)``: running trials send heartbeats; one silent for the
            grace period is failed and its parameters are retried (Optuna's RetryHeartbeatStaleTrialCallback).
    """
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("sqlalchemy").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat is not None:
                interval, grace, retries = heartbeat
                kwargs = {"heartbeat_interval": interval, "grace_period": grace,
                          "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(retries)}
            if url.startswith("sqlite"):
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
            else:
                kwargs["engine_kwargs"] = {"pool_pre_ping": True}
            storage = _rdb_storage(url, kwargs)
        if url.startswith("sqlite"):
            _sqlite_wal(storage)
        return storage
    except Exception as exc:
        msg = first_line(exc).replace(url, display_url(url))
        raise AutopruneError(f"cannot open storage {display_url(url)!r}: {msg}", field="storage.url") from None


def _creating_schema_concurrently(exc: Exception) -> bool:
    """Whether ``exc`` is another process creating the same new database's tables at this moment."""
    import sqlalchemy

    if isinstance(exc, sqlalchemy.exc.IntegrityError):  # both inserted the schema version row
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and "already exists" in str(exc)


def _rdb_storage(url: str, kwargs: dict[str, Any], attempts: int = 6) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried while another worker creates the same fresh database's schema (Optuna checks,
    then creates: two processes opening a new database at once can both try, and one fails)."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not _creating_schema_concurrently(exc):
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging: readers no longer block the writer, and a commit costs ~1 ms instead of ~4 ms here.
    Safe for processes on one machine (SQLite studies refuse workers on other machines)."""
    import sqlalchemy

    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def _open_for(study: Study, url: str) -> optuna.storages.BaseStorage:
    """``open_storage`` for the study's URL; a failure names the study file and says what was expected."""
    try:
        return open_storage(url)
    except AutopruneError as err:
        raise AutopruneError(f"{err.message}; expected a storage that answers, e.g. sqlite:///study.db or "
                             "postgresql://user@host/db", source=str(study.path), field="storage.url") from None


def load_optuna_study(study: Study, storage_url: str | None = None, study_name: str | None = None) -> optuna.Study:
    """The existing Optuna study behind ``study`` (an error if it has not been created by ``search``)."""
    url = storage_url or study.storage_url
    name = study_name or study.study_name
    storage = _open_for(study, url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise AutopruneError(f"no study named {name!r} in {display_url(url)}; run `autoprune search` first") from None


def heartbeat_settings(study: Study) -> tuple[int, int, int]:
    s = study.config.storage
    return s.heartbeat_interval, s.grace_period, s.max_retry


def create_or_load(study: Study, storage_url: str | None, study_name: str | None, sampler: optuna.samplers.BaseSampler,
                   reference: dict[str, Any], storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the Optuna study, or load it and check it means the same thing (objectives, search space)."""
    url = storage_url or study.storage_url
    name = study_name or study.study_name
    storage = storage or open_storage(url, heartbeat_settings(study))
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        ost = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        _check_same_study(study, ost, url)
        return ost
    ost = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=study.directions,
                              load_if_exists=True)
    ost.set_user_attr("objectives", list(study.config.objectives))
    ost.set_user_attr("fingerprint", study.fingerprint())
    ost.set_user_attr("fingerprints", study.fingerprint_parts())
    ost.set_user_attr("base", reference)
    return ost


def _check_same_study(study: Study, ost: optuna.Study, url: str) -> None:
    attrs = StudyAttrs.from_study(ost)
    if list(attrs.objectives) != list(study.config.objectives):
        raise AutopruneError(f"study {ost.study_name!r} in {display_url(url)} has objectives {list(attrs.objectives)}, "
                             f"the study file asks for {study.config.objectives}; use another --study-name",
                             source=str(study.path), field="objectives")
    _check_same_latency(study, ost, url)
    if attrs.fingerprint in (None, study.fingerprint()):
        return
    theirs, ours = attrs.fingerprints, study.fingerprint_parts()
    differ = [k for k in ours if k in theirs and theirs[k] != ours[k]]
    where = f"study {ost.study_name!r} in {display_url(url)}"
    if differ == ["space"]:
        raise AutopruneError(f"{where} was created with another search space; expected this file to match it, or "
                             "use another --study-name", source=str(study.space_path))
    if differ:
        raise AutopruneError(f"{where} was created with other {' and '.join(differ)} settings; expected them to match, "
                             "or use another --study-name", source=str(study.path), field=differ[0])
    raise AutopruneError(f"{where} was created with a different model, data, search space or recovery; expected "
                         "them to match, or use another --study-name", source=str(study.path))


def _check_same_latency(study: Study, ost: optuna.Study, url: str) -> None:
    """A resumed study measures latency as its earlier runs did: on the same backend at the same batch size (what
    its reference was measured with), so one front never mixes two meanings of ``latency_ms``. Studies whose
    reference predates a setting are not checked on it. (Not in the fingerprint: it would change every study's.)"""
    base, m = StudyAttrs.from_study(ost).base, study.config.measure
    for name, ours in (("latency_backend", m.latency_backend), ("latency_batch_size", m.latency_batch_size)):
        theirs = base.get(name)
        if theirs is not None and theirs != ours:
            raise AutopruneError(f"study {ost.study_name!r} in {display_url(url)} measured latency with {name} "
                                 f"{theirs!r}, this file asks for {ours!r}; set it back, or use another --study-name",
                                 source=str(study.path), field=f"measure.{name}")


def _check_host(ost: optuna.Study, url: str) -> list[str] | None:
    """The study's hosts plus this one, or None if this host is already registered; raises for SQLite across hosts."""
    import socket

    host = socket.gethostname()
    hosts = list(StudyAttrs.from_study(ost).hosts)
    if host in hosts:
        return None
    if url.startswith("sqlite") and hosts:
        raise AutopruneError(
            f"this SQLite study already has workers on {hosts}; SQLite cannot serve workers on several machines "
            "(file locking over network file systems is unreliable): use PostgreSQL (--storage postgresql://...) "
            "or Optuna's JournalStorage on a shared file system", field="storage.url")
    return hosts + [host]


def register_host(ost: optuna.Study, url: str) -> None:
    """Record this machine among the study's workers; refuse SQLite once workers span machines."""
    hosts = _check_host(ost, url)
    if hosts is not None:
        ost.set_user_attr("hosts", hosts)


def preflight(study: Study) -> None:
    """Before any compute: the storage answers, and an existing study of that name is this study and may take
    workers from this machine. Writes nothing (a SQLite file's folder aside)."""
    url = study.storage_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        _check_creatable(study, Path(url[len("sqlite:///"):]))
        return  # a new local study: nothing else to check, and nothing should be created yet
    storage = _open_for(study, url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study.study_name in names:
        ost = optuna.load_study(study_name=study.study_name, storage=storage)
        _check_same_study(study, ost, url)
        _check_host(ost, url)


def _check_creatable(study: Study, file: Path) -> None:
    """A new SQLite file's nearest existing folder must be writable (checked, not tried: nothing is created)."""
    existing = next((p for p in file.absolute().parents if p.exists()), Path("/"))
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise AutopruneError(f"cannot create the SQLite file {file}: {existing} is not a writable folder; expected "
                             "a path in a writable folder", source=str(study.path), field="storage.url")


def counts(ost: optuna.Study) -> dict[str, int]:
    out = {s: 0 for s in ("COMPLETE", "FAIL", "RUNNING", "PRUNED", "WAITING")}
    for t in ost.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def trial_entry(t: FrozenTrial) -> dict[str, Any]:
    """A completed trial as a front entry (see :meth:`autoprune.engine.record.TrialRecord.entry`)."""
    return TrialRecord.from_frozen(t).entry()


def records(ost: optuna.Study, states: Iterable[TrialState] = (TrialState.COMPLETE,)) -> list[TrialRecord]:
    """The study's trials in ``states`` as records."""
    return [TrialRecord.from_frozen(t) for t in ost.get_trials(deepcopy=False, states=tuple(states))]


def entries_at(ost: optuna.Study, rung: int | None) -> list[dict[str, Any]]:
    """Every completed trial that reached the rung of ``rung`` fine-tune steps, as an entry scored there (all of
    them, with their reported accuracy, for None): what a plot beside :func:`front` shows."""
    from autoprune.engine.record import heads

    return [r.entry(rung) for r in heads(records(ost)) if r.accuracy_at(rung) is not None]


def feasible(trial: FrozenTrial) -> bool:
    """All constraint values Optuna stored on the trial ("constraints" list or "constraints:<name>" keys) <= 0."""
    for key, value in trial.system_attrs.items():
        if key == "constraints" or key.startswith("constraints:"):
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(v > 0 for v in values):
                return False
    return True


def front(ost: optuna.Study, rung: int | None = None) -> list[dict[str, Any]]:
    """The non-dominated feasible completed candidates, compared at one rung, sorted by MACs.

    Each candidate counts once (its lineage's latest trial, :func:`autoprune.engine.record.heads`). ``rung`` (fine-tune
    steps): compare the candidates that reached it, by their accuracy there. None: without cost targets, the
    highest rung every candidate reached; with cost targets, the highest rung that every target's best-trained
    candidate reached, so each target's candidates that climbed that far are compared there (the ones that did
    not were passed over at a lower rung). A front never mixes rungs: each entry's ``accuracy`` is at ``rung``.
    With cost targets the front is made of each target's best candidate (candidates of one target differ in MACs
    only within the placement tolerance, which is no trade-off).
    """
    from autoprune.engine.record import common_rung, heads
    from autoprune.pareto import non_dominated

    done = [TrialRecord.from_frozen(t) for t in ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t)]  # the frozen trial is needed for its constraint values
    done = [r for r in heads(done) if r.completed and r.fidelity]
    by_target: dict[Any, list[TrialRecord]] = {}
    for r in done:
        by_target.setdefault(r.target, []).append(r)
    targeted = any(t is not None for t in by_target)
    if rung is None and targeted:
        rung = min(max(r.fidelity.steps for r in rs) for rs in by_target.values())
    elif rung is None:
        rung = common_rung([r.fidelity for r in done])
    reached = [r for r in done if rung is not None and r.fidelity.score(rung) is not None]
    if targeted:  # cost targets: each target's best candidate
        reached = [max(rs, key=lambda r: (r.fidelity.scores[rung], -(r.number or 0)))
                   for t in by_target if (rs := [r for r in reached if r.target == t])]
    objectives = list(StudyAttrs.from_study(ost).objectives)
    points = [[r.fidelity.scores[rung] if o == "accuracy" else float(r.metrics[o]) for o in objectives]
              for r in reached]
    directions = [d.name.lower() for d in ost.directions]
    entries = [reached[i].entry(rung) for i in non_dominated(points, directions)]
    return sorted(entries, key=lambda e: (e["macs"], -e["accuracy"]))


def get_record(ost: optuna.Study, number: int) -> TrialRecord:
    """The record of COMPLETE trial ``number`` (an error naming ``--trial`` otherwise)."""
    trials = ost.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise AutopruneError(f"no trial {number} in study {ost.study_name!r} (it has {len(trials)} trials)", field="--trial")
    t = match[0]
    if t.state != TrialState.COMPLETE:
        raise AutopruneError(f"trial {number} is {t.state.name}, not COMPLETE", field="--trial")
    return TrialRecord.from_frozen(t)
