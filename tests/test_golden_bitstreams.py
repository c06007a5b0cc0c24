"""Every strategy x backbone writes the bytes of the golden record (fixed seeded models)."""

from __future__ import annotations

import json

import pytest
import torch
from golden_bitstreams import (
    BACKBONES,
    GOLDEN_PATH,
    STRATEGIES,
    bitstream_digests,
    golden_codec,
    golden_image,
)
from helpers import code_and_decode


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bitstreams_are_byte_identical_to_the_golden_record(backbone, strategy) -> None:
    golden = json.loads(GOLDEN_PATH.read_text())[f"{backbone}/{strategy}"]
    codec = golden_codec(backbone, strategy)
    assert bitstream_digests(codec) == golden


@pytest.mark.parametrize("backbone", BACKBONES)
def test_golden_models_code_informative_latents_and_decode_them(backbone) -> None:
    """The record pins something: the golden latents span several symbols per element."""
    codec = golden_codec(backbone, "ste")
    reference, bitstreams, decoded = code_and_decode(codec, golden_image())
    symbols = reference.latents["y_hat"] - reference.latents.get("means", 0)
    assert symbols.round().abs().max() >= 3
    assert min(len(s) for s in bitstreams.strings["y"]) > 100
    assert (decoded - reference.x_hat).abs().max() == 0


def test_mean_scale_with_ste_writes_the_bytes_of_compressais_own_model() -> None:
    """licexp's mean-scale hyperprior + ste codes as CompressAI's ``MeanScaleHyperprior``
    (mbt2018-mean without context) does on the same weights: the same strings, byte for byte."""
    from compressai.models import MeanScaleHyperprior as CompressAIMeanScale

    codec = golden_codec("mean_scale", "ste")
    reference = CompressAIMeanScale(N=16, M=24).eval()
    renamed = {
        key.replace("hyper_latent.", "").replace("latent.", ""): value
        for key, value in codec.state_dict().items()
    }
    reference.load_state_dict(renamed)
    reference.update(force=True)
    x = golden_image()
    with torch.no_grad():
        ours = codec.compress(x).strings
        theirs = reference.compress(x)["strings"]
    assert ours["y"] == theirs[0] and ours["z"] == theirs[1]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("strategy", [*STRATEGIES, "tcq"])
def test_compress_records_what_the_eval_forward_pass_computes(backbone, strategy) -> None:
    """The encoder side ``compress`` returns is the eval-mode forward pass's hard path:
    the evaluation checks decodes and reads the estimated rate from it alone."""
    codec = golden_codec(backbone, strategy)
    x = golden_image()
    with torch.no_grad():
        reference = codec(x)
        encoder_side = codec.compress(x).encoder_side
    assert torch.equal(encoder_side.y_hat, reference.latents["y_hat"])
    per_image = sum(-torch.log2(p).flatten(1).sum(1) for p in reference.likelihoods.values())
    assert encoder_side.bits.shape == (2,)
    assert torch.allclose(encoder_side.bits, per_image, rtol=1e-6)
    assert encoder_side.bits.min() > 100
