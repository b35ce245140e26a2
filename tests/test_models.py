"""Model registry, builders, pretrained weights and exactly which parameters each training mode trains."""

import numpy as np
import pytest
import torch
from torch import nn

from wbc.models import BATCH_NORMS, PretrainedWeightsUnavailable, UnknownModelError, build_model, get_spec, list_models
from wbc.models.efficientnet_lite import lite0_weights_path, remap_lite_keys

ARCHS = ["scratch", "resnet18", "resnet34", "resnet50", "alexnet", "vgg16", "efficientnet_lite0"]

# Written out independently of the registry: the modules each mode/phase must train.
EXPECTED_TRAINABLE = {
    "scratch": {"head": ["fc"], "last": ["fc", "stages.3"]},
    "resnet18": {"head": ["fc"], "last": ["fc", "layer4"]},
    "resnet34": {"head": ["fc"], "last": ["fc", "layer4"]},
    "resnet50": {"head": ["fc"], "last": ["fc", "layer4"]},
    "alexnet": {"head": ["classifier.6"], "last": ["classifier.1", "classifier.4", "classifier.6", "features.10"]},
    "vgg16": {
        "head": ["classifier.6"],
        "last": ["classifier.0", "classifier.3", "classifier.6", "features.24", "features.26", "features.28"],
    },
    "efficientnet_lite0": {"head": ["classifier"], "last": ["blocks.6", "bn2", "classifier", "conv_head"]},
}


def _trainable_modules(model) -> list[str]:
    """The module names (one level above the parameter) whose parameters train, collapsed to the table's depth."""
    names = set()
    for name, parameter in model.net.named_parameters():
        if parameter.requires_grad:
            module = name.rsplit(".", 1)[0]
            for prefix in ("layer4", "blocks.6", "stages.3"):
                if module.startswith(prefix + "."):
                    module = prefix
            names.add(module)
    return sorted(names)


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {arch: build_model(arch) for arch in ARCHS}


def test_registry_lists_and_rejects(built):
    assert set(ARCHS) <= set(list_models())
    assert get_spec("resnet").name == "resnet50"
    with pytest.raises(UnknownModelError, match="unknown model 'resnet9000'.*scratch"):
        build_model("resnet9000")


@pytest.mark.parametrize("arch", ARCHS)
def test_eight_class_output_from_uint8(built, arch):
    model = built[arch].eval()
    size = 64 if arch == "alexnet" else 32
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        assert model(images).shape == (2, 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_parameters_per_mode_and_phase(built, arch):
    model = built[arch]
    all_params = sum(p.numel() for p in model.parameters())

    model.set_trainable("scratch")
    assert all(p.requires_grad for p in model.parameters())

    model.set_trainable("transfer")
    assert _trainable_modules(model) == EXPECTED_TRAINABLE[arch]["head"]
    head_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_in = {"scratch": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "alexnet": 4096, "vgg16": 4096, "efficientnet_lite0": 1280}
    assert head_params == head_in[arch] * 8 + 8

    model.set_trainable("finetune", phase=1)
    assert _trainable_modules(model) == EXPECTED_TRAINABLE[arch]["head"]
    model.set_trainable("finetune", phase=2, unfreeze="last")
    assert _trainable_modules(model) == EXPECTED_TRAINABLE[arch]["last"]
    model.set_trainable("finetune", phase=2, unfreeze="all")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == all_params


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0", "scratch"])
def test_frozen_batch_norm_stays_in_eval_mode(built, arch):
    model = built[arch]
    model.set_trainable("transfer")
    model.train()
    norms = [m for m in model.net.modules() if isinstance(m, BATCH_NORMS)]
    assert norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    model(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms)), "frozen BN statistics must not move"
    model.set_trainable("scratch")
    model.train()
    assert all(m.training for m in norms)


# Written out independently of the registry: what freeze_stages=2 keeps frozen, and the first module that trains.
FROZEN_BY_TWO_STAGES = {
    "efficientnet_lite0": (("conv_stem", "bn1", "blocks.0"), "blocks.1"),
    "resnet18": (("conv1", "bn1", "layer1"), "layer2"),
    "alexnet": (("features.0", "features.3"), "features.6"),
    "vgg16": (("features.0", "features.2", "features.5", "features.7"), "features.10"),
}


@pytest.mark.parametrize("arch", sorted(FROZEN_BY_TWO_STAGES))
def test_freeze_stages_keeps_the_first_stages_out_of_training_and_of_the_backward_pass(built, arch):
    model = built[arch]
    frozen_modules, first_trained = FROZEN_BY_TWO_STAGES[arch]
    frozen = tuple(module + "." for module in frozen_modules)
    model.set_trainable("finetune", phase=2, unfreeze="all", freeze_stages=2)
    model.train()
    for name, parameter in model.net.named_parameters():
        in_frozen = name.startswith(frozen)
        assert parameter.requires_grad != in_frozen, name
        parameter.grad = None
    norms = [m for n, m in model.net.named_modules() if isinstance(m, BATCH_NORMS) and (n + ".").startswith(frozen)]
    assert not any(norm.training for norm in norms), "frozen stages' batch norm keeps its statistics"
    size = 64 if arch == "alexnet" else 32
    model(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)).sum().backward()
    grads = {name: parameter.grad for name, parameter in model.net.named_parameters()}
    assert all(grads[name] is None for name in grads if name.startswith(frozen))
    assert any(grads[name] is not None for name in grads if name.startswith(first_trained + "."))
    model.set_trainable("finetune", phase=1, freeze_stages=2)
    assert _trainable_modules(model) == EXPECTED_TRAINABLE[arch]["head"], "phase 1 still trains only the head"
    model.set_trainable("finetune", phase=2, unfreeze="all")
    assert all(p.requires_grad for p in model.parameters()), "freeze_stages=0 freezes nothing"


def test_freeze_stages_out_of_range_or_outside_finetune_is_refused(built):
    model = built["efficientnet_lite0"]
    with pytest.raises(ValueError, match=r"freeze_stages=9 is invalid for efficientnet_lite0: expected 0 to 8"):
        model.set_trainable("finetune", phase=2, freeze_stages=9)
    with pytest.raises(ValueError, match="freeze_stages=1 needs mode finetune"):
        model.set_trainable("transfer", freeze_stages=1)
    with pytest.raises(ValueError, match="freeze_stages=1 is invalid for scratch: expected 0 to 0"):
        built["scratch"].set_trainable("finetune", phase=2, freeze_stages=1)


def test_lite0_pretrained_loads_strictly_every_tensor():
    model = build_model("efficientnet_lite0", pretrained=True)
    original = remap_lite_keys(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    assert len(original) == 296
    state = model.net.state_dict()
    for key, tensor in original.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(state[key], tensor), key
    assert model.net.classifier.out_features == 8


def _texture_features(model, images):
    with torch.no_grad():
        return model.net.forward_head(model.net.forward_features((images - model.mean) / model.std), pre_logits=True).numpy()


def test_lite0_pretrained_features_are_not_random():
    """Nearest-centroid accuracy on stripe orientations with random colours: pretrained >> random init."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64].astype(float)

    def texture(kind):
        frequency, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 6.3)
        wave = [np.sin(frequency * yy + phase), np.sin(frequency * xx + phase),
                np.sin(frequency * xx + phase) * np.sin(frequency * yy + phase),
                np.sin(frequency * (xx + yy) / 1.4 + phase)][kind][..., None]
        image = (wave > 0) * rng.uniform(0, 1, 3) + (wave <= 0) * rng.uniform(0, 1, 3)
        return torch.tensor(image.transpose(2, 0, 1), dtype=torch.float32)

    images = torch.stack([texture(kind) for kind in range(4) for _ in range(40)])
    labels = np.repeat(np.arange(4), 40)
    train = np.arange(len(labels)) % 2 == 0

    def probe_accuracy(pretrained):
        torch.manual_seed(0)
        features = _texture_features(build_model("efficientnet_lite0", pretrained=pretrained).eval(), images)
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        centroids = np.stack([features[train & (labels == k)].mean(0) for k in range(4)])
        predicted = ((features[~train][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        return (predicted == labels[~train]).mean()

    pretrained, random_init = probe_accuracy(True), probe_accuracy(False)
    assert pretrained >= 0.6 and pretrained >= random_init + 0.2, (pretrained, random_init)


def test_torchvision_pretrained_reads_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model("resnet18", pretrained=True)
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and "TORCH_HOME" in message and "--weights none" in message

    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18().state_dict()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(reference, checkpoints / "resnet18-f37072fd.pth")
    model = build_model("resnet18", pretrained=True)
    assert torch.equal(model.net.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.net.layer4[1].bn2.running_var, reference["layer4.1.bn2.running_var"])
    assert model.net.fc.out_features == 8


def test_scratch_has_no_pretrained_weights():
    with pytest.raises(PretrainedWeightsUnavailable, match="mode 'scratch'"):
        build_model("scratch", pretrained=True)


def test_scratch_is_far_smaller_than_the_course_baseline(built):
    # The course baseline: conv 3->8, conv 8->16, then one linear layer on a 16x110x110 map (~1.5 M weights x 8 classes).
    params = sum(p.numel() for p in built["scratch"].parameters())
    assert params < 1.5e6
