"""Any device: one rule turns "auto" | "cpu" | "cuda" | "cuda:N" into a device, models load onto it, and the
costs and reports name the device they measured on. The CUDA checks run where a GPU is visible."""

from __future__ import annotations

import pytest
import torch

import summon
from summon.data.spec import TaskData
from summon.measure.device import clock, device_name, resolve_device
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor

CUDA = torch.cuda.is_available()


def test_auto_and_cpu_resolve_and_unknown_names_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    assert device_name("cpu") == "cpu"
    assert clock("cpu") <= clock(None)


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"no CUDA GPU.*--device cpu"):
        resolve_device("cuda:1")
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        summon.load(path, device="cuda")


def _saved(tmp_path, exits=None) -> str:
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, exits=exits, max_length=16),
                        "classification", 2)
    Predictor(built.model, built.featurizer, "classification", ["a", "b"]).save(tmp_path / "m",
                                                                            architecture=built.architecture)
    return str(tmp_path / "m")


def test_load_puts_the_model_on_the_device_asked_for(tmp_path):
    predictor = summon.load(_saved(tmp_path), device="cpu")
    assert predictor.device == torch.device("cpu")
    assert predictor.to("cpu") is predictor


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("exits", [None, "all"])
def test_predictions_calibration_and_costs_run_on_cuda_and_match_the_cpu(tmp_path, exits):
    path = _saved(tmp_path, exits)
    texts = ["good film", "bad plot and worse acting", "fine"] * 8
    cpu, gpu = summon.load(path, device="cpu"), summon.load(path, device="cuda")
    assert gpu.device.type == "cuda"
    a, b = cpu.predict(texts), gpu.predict(texts)
    assert [p.label for p in a] == [p.label for p in b]
    if exits:
        data = TaskData("classification", ["a", "b"], [{"text": t, "label": i % 2} for i, t in enumerate(texts * 4)],
                        "toy")
        calibration = summon.calibrate(gpu, data, save=False)
        assert calibration.costs.device.startswith("cuda")
        cpu.calibration = calibration
        assert [p.stage for p in gpu.predict(texts, threshold=0.6)] == [p.stage for p in cpu.predict(texts, threshold=0.6)]
