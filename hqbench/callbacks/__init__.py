from .peers import PeerCallback
from .quantization import QuantizationCallback

__all__ = ["PeerCallback", "QuantizationCallback"]
