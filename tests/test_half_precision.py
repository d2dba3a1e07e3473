"""Every method fits a half-precision model: finite results (training keeps float32 master weights), an edit that
applies and draws finite images, and a pipeline left exactly as it was, in its own dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import FAST, sample_image

from erasekit.concepts import ConceptSet
from erasekit.methods import METHODS, get_method
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models.adapter import tensors_fingerprint


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", METHODS.names())
def test_a_half_precision_model_gives_a_finite_edit_and_stays_unchanged(tiny_path, name, dtype):
    pipe = load_pipeline(tiny_path, dtype=dtype)
    before = tensors_fingerprint({**pipe.unet.state_dict(), **pipe.text_encoder.state_dict()})
    edit = get_method(name)(FAST.get(name, {})).fit(ModelAdapter(pipe), ConceptSet.build(["dog"], ["cat"]))
    assert tensors_fingerprint({**pipe.unet.state_dict(), **pipe.text_encoder.state_dict()}) == before
    assert pipe.unet.dtype == dtype
    for tensor in [*edit.weights.values(), *edit.modules.values()]:
        assert torch.isfinite(tensor.float()).all()
    assert all(w.dtype == dtype for w in edit.weights.values())
    edit.apply(pipe)
    assert np.isfinite(sample_image(pipe)).all()
    edit.remove(pipe)
