"""One modality vocabulary for the runtime, the batcher and the torch model."""

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.modality import IR, RGB, modality_code, modality_name


@pytest.mark.parametrize("given,code", [("rgb", RGB), ("RGB", RGB), (" visible ", RGB), (0, RGB),
                                        (np.int64(0), RGB), ("ir", IR), ("thermal", IR),
                                        ("Infrared", IR), (1, IR), (np.int32(1), IR)])
def test_names_and_codes(given, code):
    assert modality_code(given) == code
    assert modality_name(given) == ("rgb", "ir")[code]


@pytest.mark.parametrize("bad", ["depth", "", 2, -1, 1.0, True, None, b"rgb"])
def test_anything_else_is_an_input_error(bad):
    with pytest.raises(InputError, match="unknown modality"):
        modality_code(bad)


def test_every_layer_uses_the_one_vocabulary():
    import ssft_deploy
    from ssft_deploy import batcher, features
    from ssft_deploy.datasets import records

    assert features.modality_code is modality_code and batcher.modality_name is modality_name
    assert (ssft_deploy.RGB, ssft_deploy.IR) == (records.RGB, records.IR) == (RGB, IR)
