"""timm models (``model.name: "timm:<name>"``) pass the architecture contract: pruned at 0.3 they run, lose MACs
and parameters, rebuild from their recorded plan, fine-tune and export to ONNX; and a study runs end to end on one.

One model per family at 32x32 (the dependency graph does not depend on the resolution): a ResNet, an
EfficientNet, a MobileNetV3, a ConvNeXt and a DeiT (its attention narrowed per head, no head removed).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.deliver.export import export_onnx
from autoprune.errors import AutopruneError
from autoprune.models.factory import create_model, resolve_model
from autoprune.train.distill import kd_loss
from tests.conftest import TINY_SPACE, TINY_STUDY
from tests.test_architectures import _contract

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'autoprune[timm]'")

FAMILIES = {"resnet18": {}, "efficientnet_b0": {}, "mobilenetv3_small_100": {}, "convnext_atto": {},
            "deit_tiny_patch16_224": {"img_size": 32, "patch_size": 4}}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_timm_families_prune_finetune_and_export(name, one_intra_op_thread, tmp_path):
    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=10, **FAMILIES[name])
    x = torch.randn(2, 3, 32, 32)
    pruned = _contract(model, x)
    for m in pruned.modules():
        if hasattr(m, "qkv") and hasattr(m, "head_dim"):  # every head narrower by the same amount, none removed
            assert m.num_heads == 3 and m.head_dim < 64 and m.qkv.out_features == 3 * m.num_heads * m.head_dim
    # fine-tune: two KD steps from the unpruned model change the weights and keep the loss finite (a batch of 8:
    # EfficientNet's last BatchNorm sees 1x1 maps, and two values per channel make its statistics degenerate)
    xb, yb = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.01)
    before = copy.deepcopy(pruned.state_dict())
    for _ in range(2):
        with torch.no_grad():
            teacher = model.eval()(xb)
        loss = kd_loss(pruned(xb), teacher, yb, 4.0, 0.9)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    report = export_onnx(pruned.eval(), x, tmp_path / "model.onnx")
    assert report["file"] and report["max_abs_diff"] < 1e-3, report


def test_unknown_timm_name_is_refused_with_similar_names():
    with pytest.raises(AutopruneError, match=r"unknown timm model 'resnet_18x'; similar: .*resnet18") as err:
        resolve_model("timm:resnet_18x")
    assert err.value.field == "model.name"


def test_a_study_on_a_timm_model_searches_retrains_and_exports(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    model = {"name": "timm:resnet10t", "kwargs": {"in_chans": 1}, "base_training": {"epochs": 1, "batch_size": 64}}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(dict(TINY_STUDY, model=model, workdir=str(tmp_path / "run"),
                                         budget={"n_trials": 2})))
    run = CliRunner().invoke
    assert run(main, ["search", str(study)]).exit_code == 0
    out = tmp_path / "out"
    result = run(main, ["retrain", str(study), "--trial", "0", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["structure_matches_trial"] is True and report["exports"]["onnx"]["max_abs_diff"] < 1e-3
    assert report["final"]["macs"] <= report["base"]["macs"]
