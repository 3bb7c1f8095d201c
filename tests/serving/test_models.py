"""The served models' callables in this process, as PyTriton calls them: per-request refusals and their reasons."""

import numpy as np
import pytest
from skimage import data

from psp_deploy.runtime import Pipeline
from psp_deploy.serving.client import encode_png
from psp_deploy.serving.models import PhotoLimits, ServedModels

pytest.importorskip("pytriton", reason="PyTriton is not installed (pip install 'psp-deploy[serve]')")


def _ask(served: ServedModels, photo: bytes, **parameters) -> tuple[str, str]:
    """One psp request alone: its (reason, error) outputs."""
    from pytriton.proxy.types import Request

    request = Request(data={"photo": np.array([[photo]], dtype=object)}, parameters=parameters)
    response = served.psp([request])[0]
    return tuple(bytes(response[name].reshape(-1)[0]).decode() for name in ("reason", "error"))


def test_paste_is_refused_for_models_that_take_no_photos(bundles):
    sketch = np.full((64, 64), 255, np.uint8)
    with Pipeline.from_bundle(bundles("sketch-scaled")[0].root) as pipeline:
        served = ServedModels(pipeline)
        assert _ask(served, encode_png(sketch)) == ("", "")
        reason, error = _ask(served, encode_png(sketch), paste=True)
    assert reason == "bad_parameter"
    assert error == "InputError: paste needs faces in photos: this model's sketch inputs are not photos"


@pytest.mark.parametrize(
    "parameters, limits, reason, message",
    [
        ({"paste": "maybe"}, PhotoLimits(), "bad_parameter", "bad request parameter paste: expected a boolean"),
        ({"paste": True, "mask": "oval"}, PhotoLimits(), "bad_parameter", "mask: one of face, square, got 'oval'"),
        ({}, PhotoLimits(max_bytes=1000), "too_large", "bytes is over the server's limit of 1,000"),
        ({}, PhotoLimits(max_pixels=512 * 511), "too_large", "512x512 pixels is over the limit of 261,632"),
    ],
)
def test_refusals_name_their_reason(bundles, parameters, limits, reason, message):
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        got = _ask(ServedModels(pipeline, limits), encode_png(data.astronaut()), **parameters)
    assert got[0] == reason and message in got[1], got
