"""Models by registry name: ``create_model(name, weights=None) -> (model, card)``.

Besides registered names, ``create_model("<source>:<spec>")`` asks a registered source, e.g.
``create_model("tflite:/data/mobilenet_v1_0.5_160_quant.tflite")`` (see ``sources.py``).

Model modules are imported explicitly so that importing this package registers every model; heavy or
optional dependencies are imported inside the factories, at call time.
"""

from hqbench.models._registry import create_model, list_models, list_sources, register_model, register_source
from hqbench.models._weights import state_digest
from hqbench.models.card import ModelCard

# Imported for their @register_model side effect.
from hqbench.models import efficientnet_lite, fashion_mnist_zoo, imagenet_extra, sources, torchvision_zoo, ultralytics_source, yolo  # noqa: E402,F401  isort: skip

__all__ = ["ModelCard", "create_model", "list_models", "list_sources", "register_model", "register_source", "state_digest"]
