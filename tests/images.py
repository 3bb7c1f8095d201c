"""Comparing uint8 images whose floats came from slightly different arithmetic."""

import numpy as np


def assert_same_image(test: np.ndarray, reference: np.ndarray) -> None:
    """Equal to a level at a few values. A float near a level boundary truncates to either level when its
    arithmetic differs slightly: cuDNN between two runs of one session (seen on an H200: 1 value in 12288
    off by one), or OpenVINO's synthesis compiled for batch 1 against the one compiled for any batch (seen
    on the EPYC VM: the same, 1 value in 12288). A truncated or wrong image differs far more."""
    differ = test.astype(np.int16) - reference
    assert np.abs(differ).max() <= 1 and np.count_nonzero(differ) <= max(1, differ.size // 1000)
