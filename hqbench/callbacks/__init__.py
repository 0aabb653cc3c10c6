from .peers import PeerCallback
from .qat import QATCallback
from .quantization import QuantizationCallback

__all__ = ["PeerCallback", "QATCallback", "QuantizationCallback"]
