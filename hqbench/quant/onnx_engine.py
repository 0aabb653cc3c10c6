"""Run a calibrated QuantizedModel as real INT8 on onnxruntime (CPU), called like the torch model.

The model is exported by :func:`hqbench.quant.export.export_onnx` (QDQ, dynamic batch) and loaded
with all graph optimizations on, so onnxruntime fuses ``DQ -> Conv -> Q`` into QLinearConv and
friends. Grids narrower than 8 bits carry a Clip between Q and DQ that keeps them exact but stops
that fusion: those layers then run as float kernels on dequantized integers.

:class:`~hqbench.callbacks.QuantizationCallback` (``engine="onnxruntime"``) puts it in place of
a LightningModule's ``forward``; by hand::

    engine = OnnxRuntimeEngine(qmodel, (example,))
    logits = engine(images)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .export import export_onnx


def make_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True,
                 optimized_path: str | os.PathLike | None = None):
    """An onnxruntime CPU session; ``optimize`` turns on every graph optimization (QDQ fusion).

    ``optimized_path`` saves the graph onnxruntime runs, to see which int8 kernels it fused.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine:
    """Exports ``qmodel`` once and runs it on onnxruntime; ``engine(*inputs)`` returns torch tensors.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        example_inputs: positional inputs for one forward (any batch size: axis 0 is dynamic).
        workdir: where the ``.onnx``, ``.qstate.pt`` and ``.encodings.json`` go; a temporary
            folder, removed with the engine, when None.
        threads: onnxruntime intra-op threads (its default when None).
        overwrite: replace existing files in ``workdir``.
        container: ``"uint8"`` (default) stores signed grids as uint8 shifted by 128, so that
            onnxruntime fuses layers whose input and output grids differ in sign; ``"native"``
            keeps them int8 (those layers then run as float kernels).
    """

    def __init__(self, qmodel, example_inputs, workdir: str | os.PathLike | None = None, *, opset: int = 17,
                 threads: int | None = None, overwrite: bool = False, container: str = "uint8"):
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        self._tmp = tempfile.TemporaryDirectory(prefix="hqbench-onnx-") if workdir is None else None
        folder = Path(self._tmp.name if self._tmp else workdir)
        self.path = folder / "model.onnx"
        self.export_info = export_onnx(qmodel, self.path, example_inputs, opset=opset, container=container,
                                       overwrite=overwrite or self._tmp is not None)
        with torch.no_grad():
            leaves, self._spec = tree_flatten(qmodel.model(*example_inputs))
        if not all(isinstance(v, torch.Tensor) for v in leaves):
            raise TypeError("OnnxRuntimeEngine needs a model whose outputs are all tensors "
                            f"(got {[type(v).__name__ for v in leaves]})")
        self.session = make_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the exported model takes {len(self.input_names)} inputs, got {len(inputs)}")
        feeds = {n: x.detach().to("cpu", torch.float32).contiguous().numpy() for n, x in zip(self.input_names, inputs)}
        device = inputs[0].device if inputs else torch.device("cpu")
        outs = [torch.from_numpy(o).to(device) for o in self.session.run(None, feeds)]
        return tree_unflatten(outs, self._spec)

    def close(self) -> None:
        """Drop the session and the temporary folder (if the engine made one)."""
        self.session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
