"""Read a TFLite flatbuffer: subgraph 0's tensors, their quantization and dequantized constants.

Only the flatbuffer schema from the ``tflite`` package; no TensorFlow and no interpreter, and
nothing in the file can run. :mod:`hqbench.models.tflite` rebuilds the network from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tflite

_DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
           tflite.TensorType.INT8: np.int8, tflite.TensorType.UINT8: np.uint8,
           tflite.TensorType.INT16: np.int16, tflite.TensorType.INT32: np.int32,
           tflite.TensorType.INT64: np.int64}


class TFLiteGraph:
    """Thin accessor over subgraph 0 of a TFLite flatbuffer."""

    def __init__(self, buf: bytes):
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError(f"expected 1 subgraph, found {self.model.SubgraphsLength()}")
        self.g = self.model.Subgraphs(0)

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        # Newer files keep small codes in the deprecated int8 field; take whichever is set.
        return tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))

    def name(self, t: int) -> str:
        return self.g.Tensors(t).Name().decode()

    def is_const(self, t: int) -> bool:
        data = self.model.Buffers(self.g.Tensors(t).Buffer()).DataAsNumpy()
        return isinstance(data, np.ndarray) and data.size > 0

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.g.Tensors(t).ShapeAsNumpy())

    def scales(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.g.Tensors(t).Quantization()
        if q is None or q.ScaleLength() == 0:
            return np.ones(1, np.float64), np.zeros(1, np.int64)
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1)
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64)

    def const(self, t: int, scale: np.ndarray | None = None, axis: int | None = 0) -> np.ndarray:
        """Dequantize constant ``t`` as ``scale * (q - zero_point)``, per channel along ``axis``
        (``None``: the tensor's own ``quantized_dimension``)."""
        tensor = self.g.Tensors(t)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if tensor.Type() not in _DTYPES or not isinstance(data, np.ndarray):
            raise ValueError(f"tensor {self.name(t)!r}: not a constant of a supported type")
        q = data.view(_DTYPES[tensor.Type()]).reshape(self.shape(t))
        if tensor.Type() in (tflite.TensorType.FLOAT32, tflite.TensorType.FLOAT16):
            return q.astype(np.float32)
        own_scale, zp = self.scales(t)
        scale = own_scale if scale is None else scale
        if axis is None:  # the file says which axis per-channel parameters run along
            quant = tensor.Quantization()
            axis = quant.QuantizedDimension() if quant is not None else 0
        bshape = [1] * q.ndim
        bshape[axis] = -1  # per-channel params broadcast along the quantized axis
        if scale.size > 1:
            scale = scale.reshape(bshape)
            zp = zp if zp.size == 1 else zp.reshape(bshape)
        return (scale * (q.astype(np.float64) - zp)).astype(np.float32)


def read_graph(path: Path) -> TFLiteGraph:
    """The flatbuffer of a ``.tflite`` file (data only: nothing in it can run)."""
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model not found: {path}")
    buf = path.read_bytes()
    if buf[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer (missing 'TFL3' identifier)")
    return TFLiteGraph(buf)


def options(op, cls):
    """The builtin options table of ``op``, read as ``cls``."""
    opts = cls()
    table = op.BuiltinOptions()
    opts.Init(table.Bytes, table.Pos)
    return opts


__all__ = ["TFLiteGraph", "options", "read_graph"]
