"""From the front to a deployable model: select, retrain (with resume), exports, reports, browser, dashboard."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import torch
import yaml
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.config import load_study
from autoprune.deliver.retrain import retrain
from autoprune.engine.context import prepare
from autoprune.engine.storage import get_record, load_optuna_study
from autoprune.models.factory import create_model
from autoprune.pruning.saving import load_pruned
from tests.conftest import TINY_SPACE, TINY_STUDY


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    d = tmp_path_factory.mktemp("final")
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(dict(TINY_STUDY, workdir=str(d / "run"), budget={"n_trials": 6})))
    assert run("search", path).exit_code == 0
    return path


@pytest.fixture(scope="module")
def knee(searched):
    result = run("select", searched, "--knee", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def retrained(searched, knee, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run("retrain", searched, "--trial", knee["trial"], "--epochs", 2, "--out", out, "--int8")
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def test_select_json_is_a_front_entry_with_a_reason(searched, knee):
    front = json.loads(run("pareto", searched, "--json").stdout)["front"]
    assert knee["trial"] in {e["trial"] for e in front}
    assert {"trial", "accuracy", "macs", "params", "latency_ms", "config"} <= set(knee)
    assert knee["reason"].startswith("knee")


def test_select_with_no_trial_meeting_constraints_exits_2(searched):
    result = run("select", searched, "--max-macs", 1)
    assert result.exit_code == 2 and "no trial on the front meets MACs <= 1" in result.stderr


def test_retrain_exports_pass_their_checks(retrained, knee):
    out, report = retrained
    assert report["exports"]["onnx"]["max_abs_diff"] < 1e-4
    assert report["exports"]["torchscript"]["max_abs_diff"] < 1e-5
    assert report["structure_matches_trial"] is True
    assert report["final"]["macs"] == knee["macs"] and report["final"]["params"] == knee["params"]
    assert report["split"] == "test" and report["finetune"]["epochs"] == 2
    assert report["speedup"]["macs_reduction"] > 1.0
    # latency timed paired with the base on the study's backend, at batch 1 and 64; the speed-up is the paired one
    lat = report["latency"]
    assert lat["backend"] == "torch" and {"b1", "b64"} <= set(lat)
    for batch in ("b1", "b64"):
        assert report["speedup"][f"latency_speedup_{batch}"] == pytest.approx(1 / lat[batch]["ratio"])
        assert report["final"][f"latency_ms_{batch}"] == lat[batch]["ms"]
        assert report["base"][f"latency_ms_{batch}"] == lat[batch]["base_ms"]
        assert isinstance(lat[batch]["reliable"], bool) and lat[batch]["pairs"] >= 1
    # --int8: static int8 ONNX covering the convolutions, evaluated through onnxruntime beside the float ONNX model
    int8 = report["exports"]["int8_static"]
    assert int8["file"] == str(out / "model.int8.onnx") and int8["convs_quantized"] == int8["convs"] > 0
    assert int8["float_test_accuracy"] == pytest.approx(report["final"]["test_accuracy"], abs=0.01)
    assert abs(int8["test_accuracy"] - int8["float_test_accuracy"]) <= 0.1
    assert int8["latency_backend"] == "onnxruntime" and int8["speedup_vs_float"] > 0
    # sizes as saved state_dicts: the pruned model's file is smaller than the base's would be, and no base file
    # is left in the output folder
    assert 0 < report["final"]["file_bytes"] < report["base"]["file_bytes"]
    assert not (out / "base_state_dict.pt").exists()
    for name in ("model.pt", "model.onnx", "model.int8.onnx", "model.torchscript.pt", "report.html",
                 "study/front_macs.png", "study/front_latency_ms.png", "study/study.html"):
        assert (out / name).is_file(), name


def test_load_pruned_round_trips_the_retrained_model(retrained):
    out, _ = retrained
    model = load_pruned(out / "model.pt", create_model("quickstart_cnn", 10, width=8)).eval()
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), scripted(x), atol=1e-6)
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["format"] == "autoprune.pruned/1"


def test_interrupted_retrain_resumes_to_the_same_model(searched, knee, tmp_path):
    study = load_study(searched)
    ctx = prepare(study, measure_reference=False)
    frozen = get_record(load_optuna_study(study), knee["trial"])
    straight = retrain(ctx, frozen, epochs=2, out_dir=tmp_path / "a")

    def stop_after_first(epoch, total, loss):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain(ctx, frozen, epochs=2, out_dir=tmp_path / "b", on_epoch=stop_after_first)
    resumed = retrain(ctx, frozen, epochs=2, out_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 1
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_progressive_retrain_reaches_the_trial_size(searched, knee, tmp_path):
    study = load_study(searched)
    ctx = prepare(study, measure_reference=False)
    frozen = get_record(load_optuna_study(study), knee["trial"])
    res = retrain(ctx, frozen, epochs=2, out_dir=tmp_path / "p", progressive_steps=2)
    params = sum(p.numel() for p in res.model.parameters())
    assert abs(params - knee["params"]) <= 0.05 * knee["params"]
    assert len(res.history) > 0


def test_report_command_writes_plots_table_and_importances(searched, tmp_path):
    result = run("report", searched, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "study.json").read_text())
    assert data["trials"] == 6 and data["front"]
    assert set(data["importances"]) == {"accuracy", "macs"}
    assert (tmp_path / "r" / "front_macs.png").stat().st_size > 10_000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_headless_chromium_without_console_errors(retrained):
    out, _ = retrained
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tempfile.mkdtemp()}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", (out / "report.html").as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "autoprune: trial" in dom
    assert dom.count('class="main-svg"') >= 2, "plotly drew the front plots"
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_on_localhost(searched):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "dashboard", str(searched), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status is None:
            assert proc.poll() is None, f"the dashboard exited ({proc.returncode}): {proc.communicate()[1][-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    status, body = r.status, r.read().decode()
            except OSError:
                time.sleep(0.5)  # the poll interval: nothing listens on the port yet
        assert status is not None, f"the dashboard did not answer on port {port} within 60 s"
        assert status == 200 and "tiny" in body
        listening = subprocess.run(["ss", "-ltn"], check=False, capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_retrain_runs_the_trials_training_loop_with_its_recorded_recovery_settings(searched, knee, tmp_path,
                                                                                   monkeypatch):
    """A change to recovery changes both: retrain's optimizer and loss come from the trial's recorded settings
    (momentum, weight decay, temperature, alpha), through the same make_optimizer / run_steps as a trial."""
    import dataclasses

    import autoprune.deliver.retrain as retrain_module

    study = load_study(searched)
    ctx = prepare(study, measure_reference=False)
    record = get_record(load_optuna_study(study), knee["trial"])
    odd = {"momentum": 0.5, "weight_decay": 0.0123, "temperature": 2.5, "alpha": 0.3}
    record = dataclasses.replace(record, plan=dataclasses.replace(record.plan,
                                                                  recovery={**record.plan.recovery, **odd}))
    seen = {}
    real_steps = retrain_module.run_steps

    def spy(student, batches, opt, sched, settings, teacher=None, **kwargs):
        group = opt.param_groups[0]
        seen.update(momentum=group["momentum"], weight_decay=group["weight_decay"],
                    temperature=settings.temperature, alpha=settings.alpha, teacher=teacher)
        return real_steps(student, batches, opt, sched, settings, teacher, **kwargs)

    monkeypatch.setattr(retrain_module, "run_steps", spy)
    retrain(ctx, record, epochs=1, out_dir=tmp_path / "r")
    assert {k: seen[k] for k in odd} == odd and seen["teacher"] is ctx.base
