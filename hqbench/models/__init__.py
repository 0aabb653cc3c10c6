"""Models by registry name: ``create_model(name, weights=None) -> (model, card)``.

Model modules are imported explicitly so that importing this package registers every model; heavy or
optional dependencies are imported inside the factories, at call time.
"""

from hqbench.models._registry import create_model, list_models, register_model
from hqbench.models.card import ModelCard

# Imported for their @register_model side effect.
from hqbench.models import fashion_mnist_zoo, imagenet_extra, torchvision_zoo, yolo  # noqa: E402,F401  isort: skip

__all__ = ["ModelCard", "create_model", "list_models", "register_model"]
