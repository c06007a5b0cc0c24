"""What a decoder checks before and while it decodes a container: the model that wrote it,
the sizes, the symbols (encoder-decoder desync) and a finite result."""

from __future__ import annotations

import pytest
import torch
from helpers import informative_codec

from licexp.backbones import Bitstreams, MeanScaleHyperprior
from licexp.data import PhotoSamples
from licexp.evaluation.bitstream import BitstreamError, CodedImage, pack, unpack
from licexp.evaluation.codec import code_image, decode_container
from licexp.quant import NoiseQuantization


@pytest.fixture(scope="module")
def coded() -> tuple[MeanScaleHyperprior, bytes, torch.Tensor]:
    codec = informative_codec()
    image = PhotoSamples(["coffee"], crop_size=128)[0]["image"]
    coding = code_image(codec, image)
    assert coding.decode_error == 0 and coding.bpp > 0.5
    return codec, coding.container, coding.x_hat


def test_the_writing_model_decodes_its_own_file(coded) -> None:
    codec, container, x_hat = coded
    assert torch.equal(decode_container(codec, container), x_hat)


def test_another_checkpoint_is_refused_naming_both_fingerprints(coded) -> None:
    codec, container, _ = coded
    other = informative_codec(seed=1)
    found = unpack(container).identity.fingerprint.hex()
    with pytest.raises(BitstreamError, match=f"another model.*{found}") as error:
        decode_container(other, container)
    assert found != "" and "this is MeanScaleHyperprior" in str(error.value)


def test_the_same_weights_with_another_strategy_are_refused(coded) -> None:
    codec, container, _ = coded
    noise = informative_codec(quantizer=NoiseQuantization())
    assert unpack(container).identity.strategy == "StraightThroughQuantization"
    with pytest.raises(BitstreamError, match="NoiseQuantization"):
        decode_container(noise, container)


def test_other_cdf_tables_change_the_fingerprint(coded) -> None:
    codec, container, _ = coded
    other = informative_codec()
    other.update(scale_table=torch.exp(torch.linspace(-2, 5, 40)), force=True)
    with pytest.raises(BitstreamError, match="another model"):
        decode_container(other, container)


def test_a_decoder_with_slightly_other_entropy_parameters_is_caught_by_the_symbols(
    coded,
) -> None:
    """The desync CompressAI users meet across devices: same file, same weights as far as the
    fingerprint knows (it is passed explicitly), but the decoder computes other scales."""
    codec, container, _ = coded
    identity = unpack(container).identity
    decoder = informative_codec()
    with torch.no_grad():
        decoder.h_s[-1].bias[: decoder.M].add_(0.3)  # the scales, lifted off their bound
    # Unchecked, this decoder reads other symbols into another image ...
    wrong = decoder.decompress(unpack(container).bitstreams)
    assert not torch.equal(wrong, codec.decompress(unpack(container).bitstreams))
    # ... which the symbol checksum refuses.
    with pytest.raises(BitstreamError, match="decoded symbols differ from the encoder's"):
        decode_container(decoder, container, identity)


def test_a_non_finite_decode_names_the_latent(coded) -> None:
    codec, container, _ = coded
    identity = unpack(container).identity
    decoder = informative_codec()
    with torch.no_grad():
        decoder.h_s[-1].bias[decoder.M :].fill_(float("nan"))  # the means only
    with pytest.raises(BitstreamError, match="decoded latent 'y' holds non-finite"):
        decode_container(decoder, container, identity)
    broken = informative_codec()
    with torch.no_grad():
        broken.g_s[-1].bias.fill_(float("inf"))
    with pytest.raises(BitstreamError, match="reconstruction holds non-finite"):
        decode_container(broken, container, identity)


def test_a_latent_size_that_does_not_fit_the_image_is_refused_before_decoding(coded) -> None:
    codec, container, _ = coded
    original = unpack(container)
    wrong = CodedImage(
        Bitstreams(original.bitstreams.strings, (200, 300)),
        original.height,
        original.width,
        original.identity,
        original.symbol_checksum,
    )
    with pytest.raises(
        BitstreamError, match=r"\(200, 300\) does not fit a 128x128 image.*\(2, 2\)"
    ):
        decode_container(codec, pack(wrong))


def test_the_release_padding_centres_the_image_in_zeros_and_decodes_to_it() -> None:
    from licexp.evaluation.bitstream import unpack as read
    from licexp.evaluation.codec import pad_image

    x = torch.rand(1, 3, 100, 90)
    padded = pad_image(x, 64, "centred_zeros")
    assert padded.shape[-2:] == (128, 128)
    top, left = 14, 19  # (128 - 100) // 2, (128 - 90) // 2
    assert torch.equal(padded[..., top : top + 100, left : left + 90], x)
    assert padded[..., :top, :].abs().sum() == 0 and padded[..., :, :left].abs().sum() == 0
    assert padded[..., top + 100 :, :].abs().sum() == 0
    codec = informative_codec()
    coding = code_image(codec, x[0], padding="centred_zeros")
    assert coding.decode_error == 0 and coding.x_hat.shape == (3, 100, 90)
    assert read(coding.container).padding == "centred_zeros"
    assert torch.equal(decode_container(codec, coding.container), coding.x_hat)
    replicate = code_image(codec, x[0])
    assert not torch.equal(replicate.x_hat, coding.x_hat)  # another frame, another code


def forged(coded: CodedImage, **changes) -> bytes:
    """``coded`` repacked with other fields: every CRC recomputed, as anyone can."""
    strings = changes.pop("strings", coded.bitstreams.strings)
    latent_size = changes.pop("latent_size", coded.bitstreams.latent_size)
    fields = {
        "height": coded.height,
        "width": coded.width,
        "identity": coded.identity,
        "symbol_checksum": coded.symbol_checksum,
        **changes,
    }
    return pack(CodedImage(Bitstreams(strings, latent_size), **fields))


def test_missing_and_unknown_latents_are_named(coded) -> None:
    codec, container, _ = coded
    original = unpack(container)
    strings = original.bitstreams.strings
    with pytest.raises(BitstreamError, match=r"lacks 'y' latents: .* exactly 'z', 'y'"):
        decode_container(codec, forged(original, strings={"z": strings["z"]}))
    extra = {**strings, "w": [b"\x00"]}
    with pytest.raises(BitstreamError, match="has unknown 'w' latents"):
        decode_container(codec, forged(original, strings=extra))
    swapped = {"y": strings["z"], "x": strings["y"]}
    with pytest.raises(BitstreamError, match="lacks 'z' and has unknown 'x' latents"):
        decode_container(codec, forged(original, strings=swapped))


def test_a_forged_symbol_checksum_names_both_possible_causes(coded) -> None:
    codec, container, _ = coded
    original = unpack(container)
    with pytest.raises(BitstreamError, match="a corrupt file .* or a different decoder"):
        decode_container(codec, forged(original, symbol_checksum=original.symbol_checksum ^ 1))


def test_a_huge_consistent_header_is_refused_before_decoding(coded) -> None:
    """The audit's crash: 65535 x 65535 pixels, the 1024 x 1024 hyper latent they imply,
    CRCs recomputed. Refused by the pixel limit; with the limit lifted, by the symbols the
    short string cannot hold, before rANS or any allocation of that size."""
    codec, container, _ = coded
    huge = forged(unpack(container), height=65535, width=65535, latent_size=(1024, 1024))
    with pytest.raises(BitstreamError, match=r"65535x65535 image .* limit of 268435456"):
        decode_container(codec, huge)
    with pytest.raises(BitstreamError, match="hyper latent 'z' declares 16777216 symbols"):
        decode_container(codec, huge, max_pixels=2**32)
