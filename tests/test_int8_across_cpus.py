"""The shipped int8 model scores the same on an x86 CPU on either side of onnxruntime's U8S8
saturation (AVX2 without VNNI saturates; VNNI, or no AVX2, does not): this host's path and the
other one, emulated.

A U8S8 control, quantized from the same float model, shows that the emulated CPU really takes
the other path, so that a pass means something.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import MODEL_FP32, MODEL_INT8, PARITY_WINDOWS

pytest.importorskip("onnx", reason="the U8S8 control is quantized with the [train] toolchain")
from models.cross_cpu import contrasting_cpu, qemu, score_on_cpu  # noqa: E402
from models.export import QuantSpec, quantize  # noqa: E402

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="VNNI is an x86 question")


def test_default_int8_scores_do_not_depend_on_the_cpus_u8s8_path(tmp_path: Path) -> None:
    assert qemu(), "qemu-x86_64 is missing: .ci/run installs Debian's qemu-user for this test"
    bundle = packaged_default_bundle()
    quant = json.loads((bundle / "manifest.json").read_text())["quantization"]
    assert (quant["format"], quant["weight"]) == ("QDQ", "QUInt8")
    windows = bundle / PARITY_WINDOWS
    control = quantize(bundle / MODEL_FP32, tmp_path / "u8s8.onnx", np.load(windows).astype(np.float32),
                       QuantSpec(format="QOperator", weight="QInt8"))
    models = [bundle / MODEL_INT8, control]

    host = score_on_cpu(models, windows, tmp_path, None)
    emulated = score_on_cpu(models, windows, tmp_path, contrasting_cpu())

    assert np.abs(emulated[1] - host[1]).max() > 1e-3  # the control scores differently there ...
    np.testing.assert_allclose(emulated[0], host[0], rtol=1e-5, atol=1e-5)  # ... the shipped model does not
