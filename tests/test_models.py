"""Model registry: every torchvision model builds and runs; weights load only from local files."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from hqbench.models import ModelCard, create_model, list_models, torchvision_zoo

# Models that build without any file (weights="random"); every other registered model needs one.
RANDOM_INIT = [n for n in list_models() if callable(getattr(torchvision_zoo, n, None))]


def test_the_registry_globs_its_names():
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert list_models("*mobilenet*") == [n for n in names if "mobilenet" in n] != []
    assert RANDOM_INIT and set(RANDOM_INIT) < set(names)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_a_config_naming_it(name):
    """``model=<name>`` on the command line is a file of tasks/model/; every registered model has one."""
    from omegaconf import OmegaConf

    from hqbench.config import TASKS_DIR

    path = TASKS_DIR / "model" / f"{name}.yaml"
    assert path.is_file(), f"{name} is registered but has no {path}"
    assert OmegaConf.load(path).model.name == name


@pytest.mark.parametrize("name", RANDOM_INIT)
def test_random_forward_shape(name):
    model, card = create_model(name, weights="random")
    assert isinstance(card, ModelCard) and card.name == name
    assert (card.input_size, card.resize, card.interpolation) == (224, 256, "bilinear")
    assert card.num_classes == 1000 and card.weights == "random"
    assert not model.training
    n = 1 if name == "vgg16" else 2  # VGG16 at 224 is slow on CPU
    with torch.no_grad():
        out = model(torch.randn(n, card.channels, card.input_size, card.input_size))
    assert type(out) is torch.Tensor and out.shape == (n, 1000)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'") as err:
        create_model("resnet9000")
    assert "mobilenet_v2" in str(err.value) and "vgg16" in str(err.value)


def test_missing_weights_file_names_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        create_model("mobilenet_v2", weights=str(path))


def test_missing_hub_cache_names_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("vgg16")
    msg = str(err.value)
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg


def test_loads_hub_cache_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    reference = tvm.mobilenet_v2(weights=None)
    path = torchvision_zoo.hub_checkpoint_path(tvm.MobileNet_V2_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model, card = create_model("mobilenet_v2")
    assert card.weights == str(path)
    assert torch.equal(model.classifier[1].weight, reference.classifier[1].weight)


def test_loads_lightning_checkpoint(tmp_path):
    reference = tvm.mobilenet_v2(weights=None)
    path = tmp_path / "task.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()},
                "epoch": 3}, path)
    model, _ = create_model("mobilenet_v2", weights=str(path))
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)


def test_wrong_architecture_is_rejected(tmp_path):
    path = tmp_path / "vgg_head.pth"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        create_model("mobilenet_v2", weights=str(path))


@pytest.mark.parametrize("name", ["googlenet_fmnist", "yolov3_tiny_synth"])
def test_project_model_wrong_architecture_is_a_one_line_value_error(tmp_path, name):
    """Project checkpoints of another network: a ValueError naming the file, not torch's RuntimeError."""
    path = tmp_path / "other.pt"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match=rf"{name}: weights file {path} does not fit the architecture"):
        create_model(name, weights=str(path))


def test_googlenet_skips_only_aux_heads(tmp_path):
    # torchvision's checkpoint includes aux1/aux2; loading must accept exactly those extra keys.
    full = tvm.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pth"
    torch.save(full.state_dict(), path)
    model, _ = create_model("googlenet", weights=str(path))
    assert model.aux1 is None and torch.equal(model.fc.weight, full.fc.weight)


def test_googlenet_card_equals_torchvision_transform_input():
    # torchvision runs these weights with transform_input=True on ImageNet-normalised input; ours
    # has transform_input=False and a mean=std=0.5 card. Both must compute the same function.
    ours, card = create_model("googlenet", weights="random")
    theirs = tvm.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False)
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    pixels = torch.rand(1, 3, 224, 224)
    imagenet = tvm.GoogLeNet_Weights.IMAGENET1K_V1.transforms()

    def normalise(mean, std):
        return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    as_card, as_tv = normalise(card.mean, card.std), normalise(imagenet.mean, imagenet.std)
    with torch.no_grad():
        torch.testing.assert_close(ours(as_card), theirs(as_tv), rtol=1e-4, atol=1e-4)


def test_tflite_without_weights_or_env(monkeypatch):
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="model.weights=PATH.*HQBENCH_DATA"):
        create_model("mobilenet_v2_tflite")


def test_tflite_env_without_file_names_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HQBENCH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("mobilenet_v2_tflite")
    assert str(tmp_path / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite") in str(err.value)


# Every architecture the paper uses goes through the same quantization path, with nothing left in
# float (VGG16/GoogLeNet on small inputs with random weights: this checks the path, not accuracy).
QUANTIZABLE = RANDOM_INIT + ["googlenet_fmnist", "mobilenet_v2_fmnist", "vgg16_fmnist"]


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_paper_architectures_quantize_fully(name):
    from hqbench.quant import quantize

    model, card = create_model(name, weights="random")
    size = 32 if name.endswith("_fmnist") else 64
    batches = [torch.randn(2, 3, size, size) for _ in range(2)]
    qmodel = quantize(model, batches, method="B")
    summary = qmodel.summary()
    assert summary["float_ops"] == {}
    assert len(qmodel.plan.compute) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    with torch.no_grad():
        assert qmodel(batches[0]).shape == (2, card.num_classes)


def test_torchvision_and_timm_sources_load_local_files_only(tmp_path):
    """torchvision:NAME and timm:NAME: a local state dict (.pt or .safetensors), the card from the
    library's own metadata, one-line errors; nothing downloads."""
    from safetensors.torch import save_file

    net, card = create_model("torchvision:resnet18", weights="random")
    assert (card.name, card.input_size, card.resize, card.num_classes) == ("torchvision:resnet18", 224, 256, 1000)
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    loaded, card = create_model("torchvision:resnet18", weights=str(path))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), net(x)) and card.weights == str(path)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        create_model("torchvision:resnet34", weights=str(path))
    with pytest.raises(ValueError, match="torchvision:nope is not a torchvision classifier"):
        create_model("torchvision:nope")

    net, card = create_model("timm:resnet18", weights="random")
    assert card.name == "timm:resnet18" and card.interpolation == "bicubic" and card.resize > card.input_size
    st = tmp_path / "r18.safetensors"
    save_file(net.state_dict(), str(st))
    loaded, _ = create_model("timm:resnet18", weights=str(st))
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(ValueError, match=r"timm:resnet18 needs model.weights=PATH"):
        create_model("timm:resnet18")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors file"):
        create_model("timm:resnet18", weights=str(tmp_path / "bad.safetensors"))


def test_source_prefixes_compose_on_the_command_line():
    from hqbench.config import compose

    cfg = compose("classification", ["model=torchvision:resnet18", "model.weights=/w/r18.pt"])
    assert (cfg.model.name, cfg.model.weights) == ("torchvision:resnet18", "/w/r18.pt")
    assert compose("classification", ["model=tflite:../m.tflite"]).model.name == "tflite:../m.tflite"


def test_a_timm_state_dict_with_its_own_head_builds_that_head_and_a_bad_one_is_one_line(tmp_path):
    """W17 (timm): a 5-class head used to end in torch's multi-line size-mismatch RuntimeError."""
    pytest.importorskip("timm")
    import timm

    from hqbench.models import create_model

    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5)
    path = tmp_path / "five.pt"
    torch.save(net.state_dict(), path)
    model, card = create_model("timm:mobilenetv3_small_050", weights=str(path))
    assert card.num_classes == 5 and model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    state = net.state_dict()
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"first mismatched key 'conv_stem.weight'") as err:
        create_model("timm:mobilenetv3_small_050", weights=str(path))
    assert "\n" not in str(err.value)
