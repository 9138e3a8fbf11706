"""Deploy: a trained model (a run directory, or any nn.Module) as a checked ONNX file.

``export_onnx(run_or_model, path)`` is the Python twin of ``bnlab export RUN --onnx PATH``:

1. the model, as the run's checkpoint left it (``Run.model()``, eval mode), or a copy of the
   module given: the caller's model is never changed;
2. optionally ``precise_bn`` (exact running statistics over N training examples), then
   ``fold`` (each BatchNorm folded into the conv/linear before it): in that order, since
   folding bakes in the running statistics;
3. refused, in one line naming the layer, if a layer cannot be exported in the mode it is in
   (``bnlab.norm.onnx.check_training``: a variant in training mode; ``model.eval()`` fixes it);
4. exported with either of PyTorch's exporters (``dynamo=True``, the default, is the
   ``torch.export``-based one; ``dynamo=False`` the TorchScript-based one), with a dynamic
   batch dimension, as standard ONNX operators only (``bnlab.norm.onnx``);
5. run in onnxruntime on a batch (the run's test data, or `example`) and compared with PyTorch:
   the largest absolute and relative difference go into the report, and a file that differs by
   more than `rtol` (relative to the largest output) is not written;
6. written atomically (``bnlab.files.write_bytes``): a failure at any step leaves
   `path` as it was.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.errors import UnavailableError, UserError
from bnlab.files import write_bytes
from bnlab.norm import onnx as norm_onnx
from bnlab.settings import like, setting, validate
from bnlab.train.config import TrainConfig

__all__ = ["ExportOptions", "ExportReport", "check_exportable", "export_onnx", "onnx_bytes",
           "run_onnxruntime"]

OPSET = 18  # both exporters; BatchNormalization with training_mode needs 14 or newer
CHECK_BATCH = 64  # examples of the run's test data that the check runs


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how far onnxruntime's output is from PyTorch's."""

    path: Path
    exporter: str  # "dynamo" (torch.export-based) or "torchscript"
    batch: int  # examples in the checked batch
    max_abs_diff: float
    max_rel_diff: float  # max |onnx - torch| / max |torch|
    operators: list[str] = field(default_factory=list)  # the ONNX op types in the graph
    folded: int = 0  # BatchNorm layers folded away
    precise_samples: int = 0  # examples PreciseBN measured (0: not asked)

    def summary(self) -> str:
        extra = (f", {self.folded} BatchNorm layer(s) folded" if self.folded else "") + (
            f", PreciseBN over {self.precise_samples} examples" if self.precise_samples else "")
        return (f"wrote {self.path} ({self.exporter} exporter{extra}); onnxruntime vs PyTorch "
                f"on {self.batch} examples: largest difference {self.max_abs_diff:.3g} "
                f"(relative {self.max_rel_diff:.3g}); ONNX operators: "
                f"{', '.join(self.operators)}")


def _require(dynamo: bool) -> None:
    names = ["onnx", "onnxruntime", *(["onnxscript"] if dynamo else [])]
    for name in names:
        try:
            __import__(name)
        except ImportError as e:
            raise UnavailableError(f"exporting to ONNX needs {', '.join(names)} ({name}: {e}); "
                                   f"pip install 'bnlab[deploy]'") from e


def check_exportable(model: nn.Module) -> None:
    """Refuse, in one line naming the layer, a model with a layer ONNX cannot express in the
    mode it is in (a variant in training mode: call ``model.eval()``)."""
    for name, module in model.named_modules():
        norm_onnx.check_training(module, name or "<model>")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' chatter off (deprecations, skipped torchvision operators): the result is
    checked against PyTorch in onnxruntime instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: nn.Module, example: Tensor, *, dynamo: bool = True,
               opset: int = OPSET) -> bytes:
    """`model` (in the mode it is in) as a serialized ONNX model whose input ``input`` and
    output ``output`` have a dynamic batch dimension."""
    check_exportable(model)
    with _quiet():
        try:
            return _export(model, example, dynamo, opset)
        except Exception as e:  # the exporters' errors run to pages: their first line
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise RuntimeError(f"torch.onnx.export ({'dynamo' if dynamo else 'torchscript'}) "
                               f"failed: {type(e).__name__}: {lines[0] if lines else ''}") from e


def _export(model: nn.Module, example: Tensor, dynamo: bool, opset: int) -> bytes:
    if dynamo:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        assert program is not None
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer,  # type: ignore[arg-type]  # (a file object
                      # works: torch's annotation names paths only)
                      dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    return buffer.getvalue()


def run_onnxruntime(model_bytes: bytes, x: Tensor) -> Tensor:
    """The serialized ONNX model run on `x` by onnxruntime's CPU provider."""
    import onnxruntime  # type: ignore[import-untyped]

    try:
        session = onnxruntime.InferenceSession(model_bytes,
                                               providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    except Exception as e:  # onnxruntime's own error classes
        raise RuntimeError(f"onnxruntime cannot run the exported model ({type(e).__name__}: "
                           f"{str(e).strip()}); export a float32 model") from e
    return torch.from_numpy(output)


def _operators(model_bytes: bytes) -> list[str]:
    import onnx

    return sorted({node.op_type for node in onnx.load_from_string(model_bytes).graph.node})


def _from_run(run: Any, precise_bn: int) -> tuple[nn.Module, Tensor, Iterable[Any] | None]:
    """The run's model (eval mode), a batch of its test data, and its training batches."""
    from bnlab.train.batches import loaders
    from bnlab.train.inputs import resolve

    config = run.config
    model = run.model()
    inputs = resolve(config)
    train, test = loaders(config, torch.device("cpu"), lambda _: None, (0, 1),
                          inputs.train_data, inputs.test_data)
    x, _ = next(iter(test.batches(0)))
    return model, x[:CHECK_BATCH], (train.batches(0) if precise_bn else None)


def _onnx_file(text: str) -> str:
    """--onnx: a file to write, not an existing directory."""
    if not text.strip():
        raise ValueError("expected a file name, got an empty one")
    if os.path.isdir(text):
        raise ValueError(f"{text!r} is a directory, not a file")
    return text


def _run_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise ValueError(f"{text!r} is not a directory")
    return text


@dataclass(frozen=True)
class ExportOptions:
    """One ``bnlab export`` command; its flags are generated from these declarations
    (``bnlab.settings``)."""

    run: str = setting("", "run directory (bnlab train)", positional=True, metavar="RUN",
                       parse=_run_dir)
    onnx: str = setting("model.onnx", "the ONNX file to write", parse=_onnx_file,
                        metavar="FILE", bad=("",))
    fold: bool = setting(False, "fold each BatchNorm into the conv/linear layer before it "
                         "first")
    precise_bn: int = like(TrainConfig, "precise_bn", help="re-estimate the running "
                           "statistics over N training examples first (0: the checkpoint's "
                           "own)")
    exporter: str = setting("dynamo", "torch.onnx's torch.export-based exporter or the "
                            "TorchScript-based one", choices=("dynamo", "torchscript"))

    def __post_init__(self) -> None:
        validate(self)


def export_onnx(run_or_model: Any, path: str | os.PathLike[str], *,
                example: Tensor | None = None, batches: Iterable[Any] | None = None,
                dynamo: bool = True, fold: bool = False, precise_bn: int = 0,
                rtol: float = 1e-5, opset: int = OPSET) -> ExportReport:
    """Export a run (a ``bnlab.train.run.Run`` or its directory) or a module to ONNX at `path`,
    checked in onnxruntime (see the module docstring).

    A module needs `example` (an input batch; its dtype and layout are exported, its batch
    size is not), and `batches` (training inputs) for ``precise_bn``; a run brings its own.
    """
    if isinstance(precise_bn, bool) or not isinstance(precise_bn, int) or precise_bn < 0:
        raise ValueError(f"precise_bn must be a number of examples >= 0, got {precise_bn!r}")
    path = Path(path)
    if path.is_dir() or not path.parent.is_dir():
        why = "it is a directory" if path.is_dir() else f"no directory {path.parent}"
        raise UserError(f"cannot write {path}: {why}; give a file name in an existing directory")
    _require(dynamo)
    if isinstance(run_or_model, nn.Module):
        if not isinstance(example, Tensor):
            raise TypeError("export_onnx(model, path) needs example=, an input batch (Tensor)")
        if precise_bn and batches is None:
            raise TypeError("precise_bn needs batches=, the training inputs to measure")
        model, x = copy.deepcopy(run_or_model), example
    else:
        from bnlab.train.run import Run

        run = run_or_model if isinstance(run_or_model, Run) else Run(run_or_model)
        model, x, batches = _from_run(run, precise_bn)
        x = x if example is None else example
    samples = folded = 0
    if precise_bn:
        from bnlab.norm.precise import precise_bn as measure

        assert batches is not None
        samples = measure(model, batches, precise_bn)
    if fold:
        from bnlab.norm.fold import fold_with_report

        model, report = fold_with_report(model, inplace=True)
        folded = len(report.folded)
    data = onnx_bytes(model, x, dynamo=dynamo, opset=opset)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)  # a copy: in training mode its buffers would move
    if not isinstance(expected, Tensor):
        raise UserError(f"export_onnx checks a model with one output tensor; this one returns "
                        f"{type(expected).__name__}")
    got = run_onnxruntime(data, x)
    diff = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    rel = diff / scale if scale > 0 else diff
    if not rel <= rtol:
        raise RuntimeError(f"onnxruntime's output differs from PyTorch's by {diff:.3g} "
                           f"(relative {rel:.3g} > rtol={rtol:g}); {path} was not written")
    write_bytes(path, data)
    return ExportReport(path, "dynamo" if dynamo else "torchscript", int(x.shape[0]), diff, rel,
                        _operators(data), folded, samples)
