"""int8: static QDQ quantisation of the extractor graphs with ONNX Runtime's quantiser.

QDQ format with symmetric int8 activations and symmetric per-channel int8 weights is what
TensorRT's explicit quantisation reads, and ONNX Runtime on CPU fuses the same QDQ pairs into
integer kernels (VNNI where the CPU has it). The convolutions and matrix products are quantised,
and each ReLU, and each ReLU6 (exported as ``Clip``, MobileNetV2), is folded into the
quantisation of the convolution output it reads: that output is then quantised over the
activation's range ([0, max], [0, 6]) instead of its signed range, twice the resolution or more
where it matters (u8 graphs drop the ReLU / Clip node; s8 graphs keep it between Q/DQ pairs,
which TensorRT fuses). A convolution that computes by cancellation (a folded BN with a large
offset, ``export.conditioning``) stays float32 with every convolution upstream of it. Activation rounding, not weight rounding, is most of the int8 error here (16-bit
activations with int8 weights: mean feature cosine 0.9989; 16-bit weights, 8-bit activations:
0.9967). The residual additions, the pooling and the BNNeck affine stay in float32.
The transfer graph is not quantised (its cost is the gather / normalisation of Eq. 10, and its
single matmul is small); the int8 variant uses the fp32 transfer graph.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from export.conditioning import float32_convs
from export.errors import ExportError

# "Relu" / "Clip" (ReLU6): folded into its producer's output quantisation (see above), not a
# kernel of its own
QUANT_OPS = ("Conv", "MatMul", "Gemm", "Relu", "Clip")


class ImageBatches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over an image array."""

    def __init__(self, images: np.ndarray, batch: int = 16, input_name: str = "images") -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch = batch
        self.input_name = input_name
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[start:start + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, images: np.ndarray,
                  method: str = "minmax", batch: int = 16, activations: str = "s8",
                  float_nodes: Sequence[str] | None = None) -> Path:
    """Write a QDQ int8 copy of the extractor graph ``src``, calibrated on ``images``.

    ``images`` must come from the training split (see ``export.images.calibration_images``).
    ``method``: ``minmax`` (default) | ``entropy`` | ``percentile``. ``activations``: ``s8``
    (symmetric int8, zero point 0: what TensorRT's explicit quantisation requires; the default)
    or ``u8`` (asymmetric uint8: ONNX Runtime CPU's fast VNNI path, ~3x faster there, but not
    readable by TensorRT). ``float_nodes``: nodes left in float32 (default: the convolutions
    that compute by cancellation on ``images`` and those upstream of them,
    :func:`export.conditioning.float32_convs`).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if activations not in ("s8", "u8"):
        raise ExportError(f"int8 activations must be 's8' (TensorRT-readable) or 'u8' (fast on "
                          f"ONNX Runtime CPU), got {activations!r}")
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; choose from "
                          f"{sorted(methods)}")

    class Reader(ImageBatches, CalibrationDataReader):
        pass

    if float_nodes is None:
        float_nodes = float32_convs(src, np.ascontiguousarray(images, dtype=np.float32))
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="ssft-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference only: ORT-specific fusions would not be readable by TensorRT.
        quant_pre_process(str(src), str(pre), skip_optimization=True)
        quantize_static(
            str(pre), str(dst), Reader(images, batch), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS), per_channel=True,
            nodes_to_exclude=list(float_nodes),
            activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": activations == "s8", "WeightSymmetric": True})
    onnx.checker.check_model(str(dst), full_check=True)
    return dst
