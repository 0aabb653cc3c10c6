from .quantization import QuantizationCallback

__all__ = ["QuantizationCallback"]
