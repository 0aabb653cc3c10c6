"""Export a calibrated QuantizedModel as a QDQ ONNX model that onnxruntime runs with int8 kernels.

Exporter: torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), default opset 17
(per-channel DequantizeLinear needs >= 13). The tracer runs the eager model, so the quantizers'
module hooks and TorchFunctionMode are recorded as they run. The dynamo exporter was not used: it
needs onnxscript, which hqbench does not depend on.

What the file holds:

* every activation point as ``QuantizeLinear -> DequantizeLinear``, uint8: zero point 0 on unsigned
  grids, the redistribution shift + 128 on signed ones (the same values as int8 with the shift,
  in the one type onnxruntime fuses a uint8-in/int8-out layer with; ``container="native"`` keeps
  int8 for signed grids; see :func:`export_onnx`). Grids narrower
  than 8 bits keep the 8-bit container with a ``Clip(qmin, qmax)`` on the integers between Q and DQ
  (torch's own symbolic only accepts 0..255, -128..127 and 0..127), so clamping is exact; the
  encodings JSON gives the narrow qmin/qmax. That Clip also stops onnxruntime's QDQ fusion, so
  such layers run as float kernels on exact integers. Grids wider than 8 bits are refused
  (opset 21's int16 Q/DQ is beyond torch's TorchScript exporter).
* weights as int8 initializers (symmetric, per output channel, zero point 0) behind a
  DequantizeLinear; biases as int32 at scale ``s_in * s_w``, as onnxruntime's QLinearConv wants.

Eager fake-quant computes ONNX QuantizeLinear's formula (``round(x / s)``, ties to even), so the
Q/DQ pairs reproduce it bit for bit; fused int8 kernels requantize in their own arithmetic, so
a layer may land 1 LSB off, and such steps compound with depth (MobileNetV2: <= 7 LSB at logits).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten

from ..paths import atomic_write
from .fake import QUANT, ActQuantizer
from .qdq_params import quantize_parameters, value_of

ENCODINGS_VERSION = 1
CONTAINER_MODES = ("native", "uint8")


def output_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The three files one export writes, keyed ``onnx``, ``qstate``, ``encodings``."""
    path = Path(path)
    return {"onnx": path, "qstate": path.with_suffix(".qstate.pt"), "encodings": path.with_suffix(".encodings.json")}


def check_exportable(qmodel) -> None:
    """Refuse what the QDQ file cannot hold, naming the layer: uncalibrated points, > 8-bit grids."""
    for q in qmodel.quantizers.values():
        if not bool(q.calibrated):
            raise RuntimeError(f"cannot export: layer {q.name!r} was never calibrated; run calibrate() "
                               "or load_quant_state_dict() first")
        if q.grid.bits > 8:
            raise NotImplementedError(f"cannot export layer {q.name!r}: {q.grid.bits}-bit activations need 16-bit "
                                      "Q/DQ (opset 21), which torch's TorchScript exporter does not emit")
    for name in qmodel.plan.compute:
        if qmodel.layer_weight_bits(name) > 8:
            raise NotImplementedError(f"cannot export layer {name!r}: {qmodel.layer_weight_bits(name)}-bit weights "
                                      "do not fit the int8 DequantizeLinear")


def export_onnx(qmodel, path, example_inputs=None, *, opset: int = 17, overwrite: bool = False,
                dynamic_batch: bool = True, container: str = "uint8", weights: str = "int8") -> dict:
    """Write ``path`` (QDQ ONNX), ``*.qstate.pt`` and ``*.encodings.json``; returns their paths and counts.

    ``container="uint8"`` (the default) stores every activation as uint8, signed grids shifted by
    128 (zero point z + 128, same values bit for bit): onnxruntime only fuses a Conv/Add whose
    inputs and output share one type, which the hybrid scheme's uint8-in/int8-out layers never do
    natively. ``container="native"`` stores signed grids as int8 (zero point z), unsigned ones as
    uint8, as the scheme holds them; on MobileNetV2 onnxruntime then runs 15 of its 52 convs and all
    10 residual adds in float between DQ and Q (``tests/quant/test_export.py`` counts them).
    ``weights``: ``"int8"`` (default) or ``"uint8"`` (the same integers + 128, zero point 128), the
    exact U8U8 kernels for CPUs whose u8s8 kernels saturate (:mod:`hqbench.quant.cpu`).

    Raises:
        RuntimeError: a layer was never calibrated. FileExistsError: a target exists and
        ``overwrite`` is False. ValueError: no ``example_inputs``, or opset < 13.
    """
    if example_inputs is None:
        raise ValueError("export_onnx needs example_inputs= (one batch of model inputs) to trace the model")
    if opset < 13:
        raise ValueError(f"opset {opset} cannot hold per-channel DequantizeLinear; use 13 or later")
    if container not in CONTAINER_MODES:
        raise ValueError(f"container must be one of {CONTAINER_MODES}, got {container!r}")
    check_exportable(qmodel)
    paths = output_paths(path)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}; pass overwrite=True")
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    model, order = trace_to_onnx(qmodel, example_inputs, opset, dynamic_batch, container == "uint8")
    params = quantize_parameters(model, qmodel, weights)
    encodings = {"version": ENCODINGS_VERSION, "opset": opset, "method": qmodel.method,
                 "act_bits": qmodel.act_bits, "weight_bits": qmodel.weight_bits,
                 "container": container, "weight_container": weights, "activations": activation_encodings(model, order), **params}
    requantized = requantize_reshapes(model)
    layers = quantized_layers(model)
    atomic_write(paths["onnx"], lambda f: f.write(model.SerializeToString()), binary=True)
    atomic_write(paths["qstate"], lambda f: torch.save(qmodel.quant_state_dict(), f), binary=True)
    atomic_write(paths["encodings"], lambda f: f.write(json.dumps(encodings, indent=1) + "\n"))
    return {**{k: str(p) for k, p in paths.items()}, "opset": opset, "container": container, "weights": weights,
            "activation_tensors": len(encodings["activations"]), "weight_tensors": len(encodings["weights"]),
            "requantized": requantized, "quantized_layers": layers}


def trace_to_onnx(qmodel, example_inputs: tuple, opset: int, dynamic_batch: bool, all_uint8: bool = False):
    """Trace the fake-quant model to an ``onnx.ModelProto``; also returns the quantizers in call order."""
    switched = any(q.mode != QUANT for q in qmodel.quantizers.values())
    if switched:
        qmodel.set_mode(QUANT)
    try:
        return _trace(qmodel, example_inputs, opset, dynamic_batch, all_uint8)
    finally:
        if switched:
            qmodel.set_mode("float")


def _trace(qmodel, example_inputs: tuple, opset: int, dynamic_batch: bool, all_uint8: bool):
    import onnx

    order: list[ActQuantizer] = []  # the tracer records ops in this order too
    hooks = [q.register_forward_hook(lambda m, a, o: order.append(m)) for q in qmodel.quantizers.values()]
    try:
        n_out = len(tree_flatten(_run(qmodel, example_inputs))[0])
    finally:
        for h in hooks:
            h.remove()
    inputs = [f"input{i}" for i in range(len(example_inputs))]
    outputs = [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in inputs + outputs} if dynamic_batch else None
    buffer = io.BytesIO()
    symbolic = functools.partial(_qdq_symbolic, all_uint8=all_uint8)
    torch.onnx.register_custom_op_symbolic("aten::fake_quantize_per_tensor_affine", symbolic, opset)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # qparams and shapes are constants by design; the tracer warns about every one of them.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # and the exporter's notes on constant folding, which say nothing about the file's numbers
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            with _positional_forward(qmodel.model):
                torch.onnx.export(qmodel.model, example_inputs, buffer, dynamo=False, opset_version=opset,
                                  input_names=inputs, output_names=outputs, dynamic_axes=axes)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::fake_quantize_per_tensor_affine", opset)
    return onnx.load_from_string(buffer.getvalue()), order


@contextlib.contextmanager
def _positional_forward(module):
    """``module.forward`` seen as ``forward(*inputs)`` while exporting.

    The TorchScript exporter appends forward's unused defaults to the inputs (``temperature=1.0``
    became a second graph input); the export takes exactly the example's tensors.
    """
    own = module.__dict__.get("forward")
    bound = module.forward
    module.forward = lambda *inputs: bound(*inputs)
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def _run(qmodel, example_inputs):
    with torch.no_grad():
        return qmodel.model(*example_inputs)


def container_of(qmin: int, all_uint8: bool) -> tuple[torch.dtype, int]:
    """The 8-bit type a grid is stored in, and the offset added to its integers (128: int8 as uint8)."""
    if qmin < 0:
        return (torch.uint8, 128) if all_uint8 else (torch.int8, 0)
    return torch.uint8, 0


def _qdq_symbolic(g, x, scale, zero_point, quant_min, quant_max, all_uint8: bool = False):
    """Q/DQ for any grid inside an 8-bit container; a Clip on the integers makes narrower grids exact."""
    from torch.onnx import symbolic_helper

    qmin = symbolic_helper._get_const(quant_min, "i", "quant_min")
    qmax = symbolic_helper._get_const(quant_max, "i", "quant_max")
    dtype, offset = container_of(qmin, all_uint8)
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    if qmin + offset < lo or qmax + offset > hi:
        raise NotImplementedError(f"grid {qmin}..{qmax} does not fit an 8-bit Q/DQ container")
    onnx_type = {torch.uint8: 2, torch.int8: 3}[dtype]  # TensorProto.UINT8 / INT8
    if offset:
        shift = g.op("Constant", value_t=torch.tensor(offset, dtype=torch.int32))
        zero_point = g.op("Add", g.op("Cast", zero_point, to_i=6), shift)  # 6: TensorProto.INT32
    zp = g.op("Cast", zero_point, to_i=onnx_type)
    scale = g.op("Cast", scale, to_i=1)  # FLOAT
    q = g.op("QuantizeLinear", x, scale, zp)
    if (qmin + offset, qmax + offset) != (lo, hi):
        q = g.op("Clip", q, g.op("Constant", value_t=torch.tensor(qmin + offset, dtype=dtype)),
                 g.op("Constant", value_t=torch.tensor(qmax + offset, dtype=dtype)))
    return g.op("DequantizeLinear", q, scale, zp)


# ONNX ops that are a conv or matmul layer (the denominator of an engine's "layers in int8")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantized_layers(model) -> int:
    """How many conv/matmul layers of a QDQ graph take quantized weights (a DequantizeLinear)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type in LAYER_OPS and len(n.input) > 1 and n.input[1] in dq_outputs)


# Ops that only move values: a Q/DQ pair after one, on its input's grid, changes nothing
_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def requantize_reshapes(model) -> int:
    """Put a ``Q -> DQ`` on the same grid between a reshape of dequantized values and the layer it feeds.

    The tracer writes a classifier as ``DQ -> Flatten -> Gemm``; onnxruntime fuses a Gemm only when a
    DequantizeLinear feeds it directly, so that Gemm ran in float (MobileNetV2: 52 of 53 layers in
    int8). Flatten moves values without changing them, so quantizing its output on its input's grid
    gives the same integers: the rewrite is exact. Returns how many pairs it added.
    """
    from onnx import helper

    producer = {o: n for n in model.graph.node for o in n.output}
    added: dict[str, list] = {}  # reshape output -> its Q, DQ
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        reshape = producer.get(node.input[0])
        dq = producer.get(reshape.input[0]) if reshape is not None and reshape.op_type in _RESHAPES else None
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        moved = node.input[0]
        q_out, dq_out = f"{moved}_requantized", f"{moved}_dequantized"
        added[moved] = [helper.make_node("QuantizeLinear", [moved, dq.input[1], dq.input[2]], [q_out], name=f"{moved}_QuantizeLinear"),
                  helper.make_node("DequantizeLinear", [q_out, dq.input[1], dq.input[2]], [dq_out],
                                   name=f"{moved}_DequantizeLinear")]
        node.input[0] = dq_out
    if added:  # topological order: each pair right after the reshape it reads
        nodes = list(model.graph.node)
        del model.graph.node[:]
        for n in nodes:
            model.graph.node.append(n)
            for out in n.output:
                model.graph.node.extend(added.get(out, []))
    return len(added)


def activation_encodings(model, order: list[ActQuantizer]) -> dict:
    """ONNX tensor name -> qparams, matching QuantizeLinear nodes to quantizer calls in trace order.

    The match is checked: each Q node's scale and zero point must equal its quantizer's.
    """
    quants = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if len(quants) != len(order):
        raise RuntimeError(f"export traced {len(order)} activation quantizer calls but the ONNX graph has "
                           f"{len(quants)} QuantizeLinear nodes")
    out = {}
    for node, q in zip(quants, order):
        scale, zp = value_of(model, node.input[1]), value_of(model, node.input[2])
        offset = 128 if q.grid.signed and zp.dtype.name == "uint8" else 0
        if float(scale) != float(q.scale) or int(zp) != int(q.zero_point) + offset:
            raise RuntimeError(f"QuantizeLinear on {node.input[0]!r} does not carry layer {q.name!r}'s qparams")
        out[node.input[0]] = {"layer": q.name, "scale": float(q.scale), "zero_point": int(q.zero_point),
                              "qmin": q.grid.qmin, "qmax": q.grid.qmax, "bits": q.grid.bits, "signed": q.grid.signed,
                              "dtype": zp.dtype.name, "container_offset": offset}
    return out
