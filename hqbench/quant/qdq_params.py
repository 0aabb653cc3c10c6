"""Weights and biases of an exported QDQ graph: int8/int32 initializers behind DequantizeLinear.

The exporter traces the fake-quant model, whose Conv/Linear initializers hold fake-quantized
floats; this module swaps each for its integers, scale and zero point, checking that they
dequantize bit for bit to the floats the graph held (see :mod:`hqbench.quant.export`).
"""

from __future__ import annotations

import torch


def value_of(model, name: str):
    """The numpy value of an initializer or Constant output ``name`` of an ONNX model."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(f"{name!r} is neither an initializer nor a Constant of the exported graph")


WEIGHT_CONTAINERS = ("int8", "uint8")


def quantize_parameters(model, qmodel, weights: str = "int8") -> dict:
    """Turn each quantized layer's float weight/bias initializer into int8/int32 + DequantizeLinear.

    The integers are read back from the fake-quant values the graph holds (so bias correction and
    weight-range methods need no special case) and checked to dequantize to them bit for bit. The
    DequantizeLinear output keeps the initializer's name, so consumers are untouched.
    ``weights="uint8"`` stores the same symmetric integers shifted by 128 with zero point 128
    (same values bit for bit): onnxruntime then runs U8U8 kernels, which widen to 16 bits before
    multiplying and cannot saturate on CPUs without VNNI (see :mod:`hqbench.quant.cpu`).
    """
    if weights not in WEIGHT_CONTAINERS:
        raise ValueError(f"weights container must be one of {WEIGHT_CONTAINERS}, got {weights!r}")
    inits = {i.name: i for i in model.graph.initializer}
    encodings: dict = {"weights": {}, "biases": {}}
    nodes = []
    for name in dict.fromkeys(qmodel.plan.compute):
        nodes += _layer_parameters(qmodel, name, inits, encodings, weights)
    for node, initializers in nodes:
        model.graph.initializer.remove(inits[node.output[0]])
        model.graph.initializer.extend(initializers)
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([node for node, _ in nodes] + rest)
    return encodings


def _layer_parameters(qmodel, name: str, inits: dict, encodings: dict, weights: str = "int8") -> list:
    """DequantizeLinear nodes (with initializers) for one layer's weight and bias; fills ``encodings``."""
    bits = qmodel.layer_weight_bits(name)
    qmax = 2 ** (bits - 1) - 1
    s_w = qmodel.weight_scale(name).detach().float().cpu().reshape(-1)
    w_held = _held(inits, f"{name}.weight", name)
    w_int = _integers(w_held, s_w, -qmax, qmax, name, f"{name}.weight")
    widened = qmodel.widened_channels.get(name)  # see hqbench.quant.weights.fit_bias
    b_int = None
    if f"{name}.bias" in inits:
        s_in = qmodel.quantizer(qmodel.plan.compute_inputs[name]).scale.detach().cpu().float()
        b_held = _held(inits, f"{name}.bias", name)
        s_acc = (s_in * s_w).expand(b_held.shape).contiguous()
        # Integers above 2^24 are not float32-exact, so they come from the model, not from b_held.
        b_int = qmodel.bias_integers(name)
        if not torch.equal((b_int * s_acc.double()).float(), b_held) or b_int.abs().max() > 2**31 - 1:
            raise RuntimeError(f"layer {name!r}: {name}.bias in the graph is not the model's int32 bias times "
                               "s_in * s_w; the model's fake-quant values and the exporter's scale disagree")
    axis = 0 if s_w.numel() > 1 else None
    offset = 128 if weights == "uint8" else 0
    nodes = [_dq_node(f"{name}.weight", w_int + offset, s_w, getattr(torch, weights), axis, offset)]
    encodings["weights"][f"{name}.weight"] = _param_encoding(name, s_w, -qmax, qmax, bits, weights, axis)
    encodings["weights"][f"{name}.weight"]["container_offset"] = offset
    if widened:
        encodings["weights"][f"{name}.weight"]["widened_channels"] = widened
    if b_int is not None:
        nodes.append(_dq_node(f"{name}.bias", b_int, s_acc, torch.int32, 0))
        encodings["biases"][f"{name}.bias"] = _param_encoding(name, s_acc, -(2**31), 2**31 - 1, 32, "int32", 0)
    return nodes


def _held(inits: dict, tensor: str, layer: str) -> torch.Tensor:
    from onnx import numpy_helper

    if tensor not in inits:
        raise RuntimeError(f"layer {layer!r}: no initializer {tensor!r} in the exported graph "
                           "(the exporter transposed or folded it); cannot attach its DequantizeLinear")
    return torch.from_numpy(numpy_helper.to_array(inits[tensor]).copy())


def _integers(held: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, layer: str, tensor: str) -> torch.Tensor:
    """``held / scale`` as integers, checked to dequantize bit for bit to ``held`` (scale: per axis 0)."""
    shaped = scale.reshape([-1] + [1] * (held.dim() - 1)) if scale.numel() > 1 else scale.reshape(())
    ints = torch.round(held.double() / shaped.double())
    if not torch.equal(ints.float() * shaped, held) or ints.min() < qmin or ints.max() > qmax:
        raise RuntimeError(f"layer {layer!r}: {tensor!r} in the graph is not integers in {qmin}..{qmax} times "
                           "its scale; the model's fake-quant values and the exporter's scale disagree")
    return ints


def _dq_node(tensor: str, ints: torch.Tensor, scale: torch.Tensor, dtype, axis, zero_point: int = 0):
    """A DequantizeLinear writing ``tensor`` and its (integers, scale, zero point) initializers."""
    from onnx import helper, numpy_helper

    scale = scale.reshape(-1) if axis is not None else scale.reshape(())
    zero = torch.full_like(scale, zero_point, dtype=dtype)
    initializers = [numpy_helper.from_array(ints.to(dtype).numpy(), f"{tensor}_quantized"),
                    numpy_helper.from_array(scale.float().numpy(), f"{tensor}_scale"),
                    numpy_helper.from_array(zero.numpy(), f"{tensor}_zero_point")]
    kwargs = {"axis": axis} if axis is not None else {}
    node = helper.make_node("DequantizeLinear", [f"{tensor}_quantized", f"{tensor}_scale", f"{tensor}_zero_point"],
                            [tensor], name=f"{tensor}_DequantizeLinear", **kwargs)
    return node, initializers


def _param_encoding(layer, scale, qmin, qmax, bits, dtype, axis) -> dict:
    scale = [float(v) for v in scale.reshape(-1)]
    return {"layer": layer, "scale": scale, "zero_point": [0] * len(scale), "qmin": qmin, "qmax": qmax,
            "bits": bits, "signed": True, "dtype": dtype, "axis": axis}
