"""The benchmark: its yardstick computes what a plain ResNet-50 computes, and the command runs on a tiny pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from eyeglass3d.evaluation import benchmark
from eyeglass3d.models.backbones import resnet50
from eyeglass3d.paths import REPO_ROOT


def test_fold_resnet_removes_every_batchnorm_and_keeps_the_function():
    torch.manual_seed(0)
    plain = resnet50().eval()
    for module in plain.modules():  # statistics away from the identity, so a missed or wrong fold shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    folded = benchmark.fold_resnet(plain)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in plain.modules()) == 53  # the original is untouched
    image = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(folded(image), plain(image), rtol=1e-3, atol=1e-3)


def test_yardstick_follows_the_pipelines_bf16_rule(monkeypatch):
    from eyeglass3d.models import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert benchmark.yardstick_autocast(bf16=True)._enabled and not benchmark.yardstick_autocast(bf16=False)._enabled
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert not benchmark.yardstick_autocast(bf16=True)._enabled


def test_main_times_a_tiny_pipeline_on_a_real_photo(tiny_pipeline_dir, tmp_path):
    threads = torch.get_num_threads()
    try:
        report = benchmark.main(["--weights", str(tiny_pipeline_dir), "--images", str(REPO_ROOT / "examples" /
                                 "grace_hopper.jpg"), "--repeats", "2", "--threads", "1",
                                 "--json", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(report))
    assert report["n"] == 1 and report["split"] == "examples" and report["threads"] == 1
    assert report["command"].startswith("python -m eyeglass3d.evaluation.benchmark ")
    assert str(REPO_ROOT) not in json.dumps(report)  # no machine path in a committable report
    photo = report["photos"][0]
    assert photo["photo"] == "examples/grace_hopper.jpg"
    assert set(photo["stages_ms"]) == {"detect", "landmarks", "parse", "inpaint", "regress", "mesh"}
    assert photo["total_ms"] >= sum(photo["stages_ms"].values()) * 0.5
    for name in ("fp32", "policy"):
        assert photo["ratio"][name] == pytest.approx(photo["total_ms"] / photo["resnet50_ms"][name], abs=0.01)
    assert photo["ratio_to_fastest_yardstick"] == max(photo["ratio"].values())
