"""The paper's three architectures trained by the project on Fashion-MNIST (the embedded demo).

torchvision's GoogLeNet, MobileNetV2 and VGG16, unchanged but for 10 outputs, on 32x32 inputs
(28x28 greyscale resized and replicated to RGB by the card's transform). VGG16 gets a compact
classifier head: at 32x32 its features end at 512x1x1, and torchvision's 7x7 adaptive pool plus
25088-4096-4096 head would replicate that one pixel 49 times into 120M parameters; here the head
is global pooling and 512-512-10. Weights come from ``checkpoints/<name>.pt`` (half precision,
trained with ``hqbench train``; see the card beside each file).
"""

from __future__ import annotations


from torch import nn
from torchvision import models as tvm

from hqbench.models._registry import register_model
from hqbench.models.card import ModelCard
from hqbench.models._weights import RANDOM, load_fitting_state, project_checkpoint, read_state_dict

# Fashion-MNIST training-set pixel statistics, replicated over the three channels.
_MEAN, _STD = (0.2860,) * 3, (0.3530,) * 3


def _vgg16_compact() -> nn.Module:
    model = tvm.vgg16(weights=None, num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(512, 10))
    return model


_ARCHITECTURES = {
    "googlenet_fmnist": lambda: tvm.googlenet(weights=None, num_classes=10, aux_logits=False,
                                              transform_input=False, init_weights=True),
    "mobilenet_v2_fmnist": lambda: tvm.mobilenet_v2(weights=None, num_classes=10),
    "vgg16_fmnist": _vgg16_compact,
}


def _build(name: str, weights: str | None) -> tuple[nn.Module, ModelCard]:
    path = project_checkpoint(name, weights, f"hqbench train task=classification data=fashion_mnist model={name} ...")
    state = {k: v.float() for k, v in read_state_dict(path).items()} if path is not None else None
    model = _ARCHITECTURES[name]()
    if state is not None:
        load_fitting_state(model, state, name, path)  # a truncated head is one line, not torch's RuntimeError
    card = ModelCard(name=name, input_size=32, resize=32, mean=_MEAN, std=_STD, num_classes=10,
                     weights=str(path) if path else RANDOM)
    return model.eval(), card


@register_model("googlenet_fmnist")
def googlenet_fmnist(weights: str | None = None):
    """GoogLeNet (no auxiliary heads) on 32x32 Fashion-MNIST."""
    return _build("googlenet_fmnist", weights)


@register_model("mobilenet_v2_fmnist")
def mobilenet_v2_fmnist(weights: str | None = None):
    """MobileNetV2 1.0 on 32x32 Fashion-MNIST."""
    return _build("mobilenet_v2_fmnist", weights)


@register_model("vgg16_fmnist")
def vgg16_fmnist(weights: str | None = None):
    """VGG16 (no BN) with a compact 512-512-10 head on 32x32 Fashion-MNIST."""
    return _build("vgg16_fmnist", weights)
