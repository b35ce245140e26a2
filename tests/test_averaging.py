"""Weight-space averaging of two models (`wbc average`)."""

import numpy as np
import pytest
import torch

from wbc.training.averaging import AveragingError, average_weights, fitted_weight
from wbc.models import build_model


def _model(seed, arch="scratch"):
    torch.manual_seed(seed)
    return build_model(arch)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_average_is_the_weighted_mean_of_every_float_tensor(weight):
    first, second = _model(0), _model(1)
    expected = {k: (1 - weight) * v.float() + weight * second.state_dict()[k].float()
                for k, v in first.state_dict().items() if v.is_floating_point()}
    counters = {k: v.clone() for k, v in first.state_dict().items() if not v.is_floating_point()}
    averaged = average_weights(first, second, weight).state_dict()
    for name, tensor in expected.items():
        assert torch.allclose(averaged[name], tensor, atol=1e-6), name
    for name, tensor in counters.items():
        assert torch.equal(averaged[name], tensor)


def test_average_refuses_different_architectures_and_bad_weights():
    with pytest.raises(AveragingError, match="architectures differ"):
        average_weights(_model(0), _model(0, "efficientnet_lite0"), 0.5)
    with pytest.raises(AveragingError, match="weight=1.5"):
        average_weights(_model(0), _model(1), 1.5)


def test_fitted_weight_keeps_the_first_weight_accurate_enough_else_the_most_accurate(synthetic_data):
    from wbc.data import load_split
    from wbc.inference import Predictor

    valid = load_split(synthetic_data, "valid", 32)
    first, second, weights = _model(0), _model(1), [0.9, 0.6, 0.3, 0.1]
    before = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    chosen, every = fitted_weight(first, second, weights, 32, valid, min_accuracy=1.01)
    assert list(every) == weights and chosen == max(every, key=every.get), "none reaches 101 %: the most accurate"
    for weight, accuracy in every.items():
        predicted = Predictor(average_weights(_model(0), second, weight), 32).predict_pixels(valid.pixels).argmax(axis=1)
        assert accuracy == pytest.approx(float((predicted == np.asarray(valid.targets)).mean())), weight
    threshold = sorted(every.values())[1]
    chosen, tried = fitted_weight(first, second, weights, 32, valid, min_accuracy=threshold)
    expected = next(w for w in weights if every[w] >= threshold)
    assert chosen == expected and list(tried) == weights[: weights.index(expected) + 1], "stops at the first good enough"
    assert all(torch.equal(first.state_dict()[name], tensor) for name, tensor in before.items()), "the first model is left as it was"


def test_wbc_average_logs_the_int8_flavour_when_asked(synthetic_data, tmp_path, monkeypatch):
    """`wbc main --int8` ends with an average: the champion it registers must carry the int8 file too."""
    from pathlib import Path

    import mlflow
    from click.testing import CliRunner

    from wbc.cli import cli
    from wbc.inference import export_model

    monkeypatch.setattr("wbc.inference.onnx.INT8_MIN_AGREEMENT", 0.0)  # untrained networks have no margins
    first = export_model(_model(0), 32, tmp_path / "first", onnx=False)
    second = export_model(_model(1), 32, tmp_path / "second", onnx=False)
    result = CliRunner().invoke(cli, ["average", str(first), str(second), "--data-dir", str(synthetic_data), "--int8"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.averaged` = 'true'", output_format="list")
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path))) / "artifacts" / "model"
    assert (folder / "model.onnx").is_file() and (folder / "model.int8.onnx").is_file()
    assert "onnx_int8_top1_agreement" in run.data.metrics
