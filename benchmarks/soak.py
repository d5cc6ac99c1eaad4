"""Soak test: a long quickstart search with 2 workers on PostgreSQL while workers are SIGKILLed and restarted.

Usage: python benchmarks/soak.py [--trials 200] [--kill-every 30] [--storage postgresql://postgres@127.0.0.1:5432/test]
                                 [--heartbeat 1] [--grace 5] [--baseline] [--out soak.json] [--keep]

A warm-up search of one trial (SQLite, same work folder) trains and caches the base model and the teacher's
logits first, outside the timings. Then two worker processes are started by this script, each a plain, full
`autoprune search STUDY --storage URL --study-name NAME` (what one runs on each machine of a cluster), with one
torch thread each, a fresh study name and a fresh work folder under /tmp; worker 1 starts once worker 0 has created
the study and its first trial (so their samplers are seeded differently). Every ``--kill-every`` COMPLETE trials
the script waits until every live worker is inside a trial that has drawn its parameters (as many such RUNNING
trials as live workers), SIGKILLs one worker (alternately) and starts it again at once. The killed worker's trial
stays RUNNING until its heartbeat is ``--grace`` seconds old; then the next worker to start a trial marks it FAIL
and Optuna's RetryHeartbeatStaleTrialCallback queues its parameters again. storage.heartbeat_interval /
storage.grace_period are lowered from 10 s / 60 s to ``--heartbeat`` / ``--grace`` with --set for this.

At the end it checks: exactly ``--trials`` COMPLETE trials; the FAIL trials (each killed trial, and anything
else, separately); whether each killed trial's parameters were retried (and that retry COMPLETE); that every
trial seen COMPLETE during the run is still COMPLETE with the same values; and that `autoprune pareto --json`
equals the non-dominated set recomputed from every COMPLETE trial with autoprune.pareto.non_dominated.

The time the kills cost is reported two ways: an estimate (per kill, the killed trial's lost work = kill time
minus its start, plus the restarted worker's start-up until its first trial starts; summed in worker-seconds and
divided by the number of workers for wall time, since the other worker keeps going), and, with --baseline, a
measurement: the same search without kills (a second fresh study in the same work folder) and the difference in
wall time and in span (first trial's start to last trial's end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from autoprune.engine.record import TrialRecord
from autoprune.pareto import non_dominated

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def now() -> float:
    return time.time()


def ts(dt: datetime | None) -> float | None:
    """An Optuna datetime (naive local time) as a Unix timestamp."""
    return None if dt is None else dt.timestamp()


class Soak:
    def __init__(self, args: argparse.Namespace, name: str, workdir: Path, kills: bool) -> None:
        self.args, self.name, self.workdir, self.kills_on = args, name, workdir, kills
        self.storage = optuna.storages.RDBStorage(args.storage, engine_kwargs={"pool_pre_ping": True})
        self.cmd = [sys.executable, "-m", "autoprune.cli", "search", args.study, "--storage", args.storage,
                    "--study-name", name, "--n-trials", str(args.trials),
                    "--set", f"workdir={workdir}", "--set", "measure.threads=1",
                    "--set", f"storage.heartbeat_interval={args.heartbeat}",
                    "--set", f"storage.grace_period={args.grace}"]
        self.procs: list[subprocess.Popen | None] = [None] * args.workers
        self.starts = 0
        self.seen_complete: dict[int, list[float]] = {}
        self.kills: list[dict] = []
        self.restarts: list[dict] = []
        self.exits: list[dict] = []

    # ------------------------------------------------------------------------------------------ processes
    def start(self, i: int) -> float:
        log = self.workdir / "logs" / f"soak-worker-{i}-{self.starts}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(log, "w") as fh:
            self.procs[i] = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return now()

    def alive(self) -> list[int]:
        out = []
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                out.append(i)
            elif p is not None and not any(e["pid"] == p.pid for e in self.exits):
                self.exits.append({"worker": i, "pid": p.pid, "returncode": p.returncode, "t": now()})
        return out

    # ------------------------------------------------------------------------------------------ storage
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        try:
            sid = self.storage.get_study_id_from_name(self.name)
        except KeyError:
            return []
        return self.storage.get_all_trials(sid, deepcopy=False)

    def observe(self) -> list[optuna.trial.FrozenTrial]:
        trials = self.trials()
        for t in trials:
            if t.state == TrialState.COMPLETE and t.number not in self.seen_complete:
                self.seen_complete[t.number] = list(t.values)
        return trials

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> dict:
        a = self.args
        t0 = now()
        self.start(0)
        # Worker 1 waits for the study and its first trial, so the two workers' samplers are seeded differently
        # (run_search seeds from the number of trials already there).
        while not self.trials():
            if not self.alive():
                raise SystemExit(f"worker 0 exited early: see {self.workdir / 'logs'}")
            time.sleep(0.2)
        for i in range(1, a.workers):
            self.start(i)
        thresholds = list(range(a.kill_every, a.trials, a.kill_every)) if self.kills_on else []
        pending_restart: list[dict] = []
        last_snapshot: set[int] = set()
        deadline = t0 + a.max_seconds
        while self.alive() or pending_restart:
            trials = self.observe()
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            running = {t.number for t in trials if t.state == TrialState.RUNNING}
            # restarted workers: first trial started after the restart = back at work
            for r in list(pending_restart):
                log = Path(r["log"])
                text = log.read_text(errors="replace") if log.exists() else ""
                if r.get("ready") is None and "base: " in text:
                    r["ready"] = now()
                if r.get("ready") is not None and r.get("first_trial") is None:
                    mine = self._first_trial_of(r, trials)
                    if mine is not None:
                        r["first_trial"] = mine
                        pending_restart.remove(r)
                if r in pending_restart and self.procs[r["worker"]].poll() is not None:
                    pending_restart.remove(r)
            if thresholds and complete >= thresholds[0] and not (last_snapshot & running):
                victim = len(self.kills) % a.workers
                live = self.alive()
                waited_from = now()
                # kill while every live worker is inside a trial that has drawn its parameters (so the kill loses
                # real work and there are parameters to retry)
                sampled = {t.number for t in trials if t.state == TrialState.RUNNING and t.params}
                while len(sampled) < len(live) and now() - waited_from < 20:
                    time.sleep(0.02)
                    trials = self.observe()
                    running = {t.number for t in trials if t.state == TrialState.RUNNING}
                    sampled = {t.number for t in trials if t.state == TrialState.RUNNING and t.params}
                if victim in live:
                    proc = self.procs[victim]
                    t_kill = now()
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    self.exits.append({"worker": victim, "pid": proc.pid, "returncode": proc.returncode, "t": t_kill,
                                       "killed": True})
                    last_snapshot = set(running)
                    kill = {"at_complete": complete, "worker": victim, "t": t_kill, "running_then": sorted(running)}
                    self.kills.append(kill)
                    t_restart = self.start(victim)
                    r = {"worker": victim, "started": t_restart, "log": str(self.workdir / "logs" /
                         f"soak-worker-{victim}-{self.starts - 1}.log"), "running_then": set(running),
                         "kill": len(self.kills) - 1}
                    self.restarts.append(r)
                    pending_restart.append(r)
                    print(f"[{t_kill - t0:7.1f} s] kill {len(self.kills)}: SIGKILL worker {victim} at {complete} "
                          f"COMPLETE, RUNNING then {sorted(running)}; restarted", flush=True)
                thresholds.pop(0)
            if now() > deadline:
                for i in self.alive():
                    self.procs[i].send_signal(signal.SIGKILL)
                raise SystemExit(f"soak did not finish in {a.max_seconds} s (see {self.workdir / 'logs'})")
            time.sleep(0.1)
        wall = now() - t0
        return {"wall_s": wall, "t0": t0}

    def _first_trial_of(self, r: dict, trials) -> float | None:
        """When the restarted worker started its first trial. A trial's worker is not recorded: this is the first
        trial started after the worker printed its start-up line ("base: ...": data, base model and reference
        ready) that began while every other worker was inside another trial (so the other cannot have started it).
        """
        ready = r["ready"]
        started = sorted((ts(t.datetime_start), t) for t in trials
                         if t.datetime_start is not None and ts(t.datetime_start) >= ready - 0.05)
        for s, t in started:
            overlapping = [u for u in trials if u.number != t.number and u.datetime_start is not None
                           and ts(u.datetime_start) <= s and (u.datetime_complete is None or ts(u.datetime_complete) > s)
                           and u.number not in r["running_then"]]
            if len(overlapping) >= self.args.workers - 1:
                return s
        return None


def verify(soak: Soak, wall: float, t0: float) -> dict:
    a = soak.args
    study = optuna.load_study(study_name=soak.name, storage=soak.storage)
    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in trials]
    # lost completed trials: seen COMPLETE during the run, not COMPLETE (or with other values) now
    final = {t.number: t for t in trials}
    lost = [n for n, v in soak.seen_complete.items()
            if final.get(n) is None or final[n].state != TrialState.COMPLETE or list(final[n].values) != v]
    # FAIL trials: heartbeat-stale (no fail_reason: autoprune records one for every trial that raised) vs others
    fails = [t for t in trials if t.state == TrialState.FAIL]
    reasons = {t.number: TrialRecord.from_frozen(t).failure for t in fails}
    stale = [t for t in fails if reasons[t.number] is None]
    other_fails = [{"trial": t.number, "reason": reasons[t.number].reason} for t in fails if t not in stale]
    retries: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        n = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if n is not None:
            retries.setdefault(n, []).append(t)
    kills = []
    claimed: set[int] = set()
    for k in soak.kills:
        cand = [t for t in stale if t.number in k["running_then"] and t.number not in claimed]
        entry = {"at_complete": k["at_complete"], "worker": k["worker"], "t_s": round(k["t"] - t0, 1),
                 "running_then": k["running_then"]}
        if cand:
            t = cand[0]
            claimed.add(t.number)
            entry["killed_trial"] = t.number
            entry["lost_work_s"] = round(k["t"] - ts(t.datetime_start), 3)
            entry["failed_after_s"] = round(ts(t.datetime_complete) - k["t"], 2) if t.datetime_complete else None
            rs = retries.get(t.number, [])
            entry["retried_as"] = [(r.number, r.state.name) for r in rs]
            # a retry is enqueued with the parameters the killed trial had drawn (all of them once it was past
            # sampling); a trial killed before it drew any is re-sampled afresh
            entry["killed_trial_had_params"] = bool(t.params)
            entry["retry_same_params"] = bool(rs) and bool(t.params) and all(
                {k: r.params.get(k) for k in t.params} == t.params for r in rs)
            entry["retry_complete"] = any(r.state == TrialState.COMPLETE for r in rs)
        else:
            entry["killed_trial"] = None  # the worker was between trials
            entry["lost_work_s"] = 0.0
        r = next((r for r in soak.restarts if r["kill"] == soak.kills.index(k)), None)
        if r is not None:
            entry["startup_to_ready_s"] = round(r["ready"] - r["started"], 2) if r.get("ready") else None
            entry["startup_to_first_trial_s"] = (round(r["first_trial"] - r["started"], 2)
                                                 if r.get("first_trial") else None)
        kills.append(entry)
    unexplained_stale = [t.number for t in stale if t.number not in claimed]
    # the front: `autoprune pareto --json` vs the non-dominated set of all COMPLETE trials
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "pareto", a.study, "--storage", a.storage,
                           "--study-name", soak.name, "--set", f"workdir={soak.workdir}", "--json"],
                          capture_output=True, text=True, timeout=300)
    cli_front = sorted(e["trial"] for e in json.loads(proc.stdout)["front"]) if proc.returncode == 0 else None
    directions = ["maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    idx = non_dominated([t.values for t in complete], directions)
    recomputed = sorted(complete[i].number for i in idx)
    ends = [ts(t.datetime_complete) for t in complete]
    span = max(ends) - min(ts(t.datetime_start) for t in trials if t.datetime_start) if complete else None
    durations = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in complete)
    median_trial = durations[len(durations) // 2] if durations else None
    lost_work = sum(k["lost_work_s"] for k in kills)
    startup = sum(k.get("startup_to_first_trial_s") or 0.0 for k in kills)
    return {
        "study_name": soak.name, "storage": a.storage, "workers": a.workers, "budget": a.trials,
        "heartbeat_interval_s": a.heartbeat, "grace_period_s": a.grace,
        "wall_s": round(wall, 1), "trials_by_state": by_state,
        "complete": len(complete), "exactly_budget": len(complete) == a.trials,
        "duplicate_numbers": len(numbers) != len(set(numbers)),
        "fail": len(fails), "fail_heartbeat_stale": len(stale), "fail_other": other_fails,
        "stale_fails_not_from_a_kill": unexplained_stale,
        "kills": kills, "n_kills": len(kills),
        "killed_trials_retried": sum(1 for k in kills if k.get("retried_as")),
        "killed_trials_retried_same_params": sum(1 for k in kills if k.get("retry_same_params")),
        "killed_trials_retry_complete": sum(1 for k in kills if k.get("retry_complete")),
        "seen_complete_during_run": len(soak.seen_complete), "lost_completed_trials": lost,
        "front_cli": cli_front, "front_recomputed": recomputed,
        "front_consistent": cli_front == recomputed, "pareto_cli_error": proc.stderr.strip()[-500:] if proc.returncode else None,
        "median_trial_s": round(median_trial, 3) if median_trial else None,
        "span_s": round(span, 1) if span else None,  # first trial's start to last COMPLETE trial's end
        "trials_per_hour": round(len(complete) / span * 3600) if span else None,
        "kill_cost": {
            "lost_work_s": round(lost_work, 2),
            "restart_to_first_trial_s": round(startup, 2),
            "worker_seconds": round(lost_work + startup, 2),
            "estimated_wall_s": round((lost_work + startup) / a.workers, 2),
            "method": "estimate: sum over kills of (kill time - killed trial's start) + (restart -> that worker's "
                      "first trial start), divided by the number of workers (the other keeps working)",
        },
        "worker_exits": [{k: v for k, v in e.items() if k != "t"} for e in soak.exits],
    }


def cleanup(storage: str, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-every", type=int, default=30, help="SIGKILL a worker every this many COMPLETE trials")
    ap.add_argument("--storage", default=os.environ.get("AUTOPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--heartbeat", type=int, default=1, help="storage.heartbeat_interval (s)")
    ap.add_argument("--grace", type=int, default=5, help="storage.grace_period (s)")
    ap.add_argument("--baseline", action="store_true", help="also run the same search without kills (measured cost)")
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL studies and the work folder")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="apsoak-", dir="/tmp"))
    tag = uuid.uuid4().hex[:8]
    names = [f"soak-{tag}"]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        # Train and cache the base model (and the teacher's logits) once, outside the timed runs, so the run with
        # kills and the run without start alike.
        warm = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", args.study, "--n-trials", "1",
                               "--storage", f"sqlite:///{workdir / 'warmup.db'}", "--set", f"workdir={workdir}",
                               "--set", "measure.threads=1"], capture_output=True, text=True)
        if warm.returncode != 0:
            raise SystemExit(f"warm-up search failed:\n{warm.stderr[-2000:]}")
        soak = Soak(args, names[0], workdir, kills=True)
        ran = soak.run()
        result = verify(soak, ran["wall_s"], ran["t0"])
        if args.baseline:
            names.append(f"soak-{tag}-nokill")
            base = Soak(args, names[1], workdir, kills=False)  # same workdir: the cached base model is reused
            bran = base.run()
            bres = verify(base, bran["wall_s"], bran["t0"])
            result["baseline"] = {k: bres[k] for k in ("wall_s", "span_s", "trials_per_hour", "complete", "fail",
                                                        "median_trial_s", "front_consistent")}
            result["kill_cost"]["measured_wall_s"] = round(result["wall_s"] - bres["wall_s"], 1)
            result["kill_cost"]["measured_span_s"] = round(result["span_s"] - bres["span_s"], 1)
    finally:
        if not args.keep:
            for n in names:
                cleanup(args.storage, n)
            shutil.rmtree(workdir, ignore_errors=True)
    result.update({"started_utc": started, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "study_file": args.study, "kill_every": args.kill_every, "kept": args.keep,
                   "workdir": str(workdir)})

    print()
    print(f"soak: {args.trials} trials, {args.workers} workers, {args.storage}, SIGKILL every ~{args.kill_every} "
          f"COMPLETE trials, heartbeat {args.heartbeat} s / grace {args.grace} s")
    for k in result["kills"]:
        print(f"  kill at {k['at_complete']:>3} COMPLETE (t={k['t_s']:.1f} s), worker {k['worker']}: "
              f"trial {k['killed_trial']} lost {k['lost_work_s']:.2f} s of work, FAIL after "
              f"{k.get('failed_after_s')} s, retried as {k.get('retried_as')} (same params: {k.get('retry_same_params')}), "
              f"restart to ready {k.get('startup_to_ready_s')} s, to first trial "
              f"{k.get('startup_to_first_trial_s')} s")
    rows = [
        ("trials COMPLETE", f"{result['complete']} (budget {args.trials}: {'exact' if result['exactly_budget'] else 'NOT exact'})"),
        ("trials by state", json.dumps(result["trials_by_state"])),
        ("kills", str(result["n_kills"])),
        ("FAIL (heartbeat-stale / other)", f"{result['fail']} ({result['fail_heartbeat_stale']} / {len(result['fail_other'])})"),
        ("killed trials retried / same params / retry COMPLETE",
         f"{result['killed_trials_retried']} / {result['killed_trials_retried_same_params']} / "
         f"{result['killed_trials_retry_complete']}"),
        ("stale FAILs not caused by a kill", str(result["stale_fails_not_from_a_kill"])),
        ("completed trials lost", f"{len(result['lost_completed_trials'])} of {result['seen_complete_during_run']} seen COMPLETE"),
        ("front: pareto --json == recomputed", f"{result['front_consistent']} ({len(result['front_recomputed'])} points)"),
        ("wall time (first worker start to last exit)", f"{result['wall_s']:.1f} s"),
        ("span (first trial start to last end)", f"{result['span_s']} s, {result['trials_per_hour']} trials/h"),
        ("median trial", f"{result['median_trial_s']} s"),
        ("kills' lost work", f"{result['kill_cost']['lost_work_s']:.1f} worker-s"),
        ("restart -> first trial (all kills)", f"{result['kill_cost']['restart_to_first_trial_s']:.1f} worker-s"),
        ("kills' cost, estimated", f"{result['kill_cost']['estimated_wall_s']:.1f} s wall"),
    ]
    if "baseline" in result:
        b = result["baseline"]
        rows += [("no-kill run: wall / span / COMPLETE / median trial",
                  f"{b['wall_s']:.1f} s / {b['span_s']} s / {b['complete']} / {b['median_trial_s']} s"),
                 ("kills' cost, measured (wall / span difference)",
                  f"{result['kill_cost']['measured_wall_s']:.1f} s / {result['kill_cost']['measured_span_s']:.1f} s")]
    w = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{w}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    ok = (result["exactly_budget"] and not result["lost_completed_trials"] and result["front_consistent"]
          and not result["duplicate_numbers"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
