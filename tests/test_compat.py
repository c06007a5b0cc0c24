"""licexp codecs behind CompressAI's model contract: CompressAI's own ``eval_model`` runs
them and counts licexp's bytes; ``compress`` / ``decompress`` round-trip as its tools use them."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import compose_train, compressai_eval_model, informative_codec

from licexp.backbones import LearnedCodec, MeanScaleHyperprior
from licexp.compat import as_compressai
from licexp.data import PhotoSamples
from licexp.evaluation.bitstream import unpack
from licexp.evaluation.codec import code_image, pad_image
from licexp.evaluation.metrics import psnr
from licexp.quant import StraightThroughQuantization

EVAL_MODEL = compressai_eval_model()

EVAL_MODEL = compressai_eval_model()

BACKBONES = ["mean_scale_small", "bmshj2018", "tiny_lic_small", "jiang_tiny_small"]
"""The cheapest config of each backbone family."""


def codec_of(backbone: str) -> LearnedCodec:
    """An untrained codec of a backbone config with ``ste``, ready to code, made to say
    something: its latents sit inside one bin (strings of a few bytes) until the last
    convolution to ``y`` is scaled up (``h_a``'s first scaled down to keep ``z`` in range),
    and its ``g_s`` outputs about 0, which clamps to black, until 0.45 more on the bias of
    its last layer puts the reconstruction inside ``[0, 1]``."""
    cfg = compose_train([f"backbone={backbone}", "quant=ste"])
    torch.manual_seed(0)
    codec = hydra.utils.instantiate(cfg.backbone, quantizer=hydra.utils.instantiate(cfg.quant))
    layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    to_y = [m for m in codec.g_a.modules() if isinstance(m, layers) and m.out_channels == codec.M]
    from_y = next(m for m in codec.h_a.modules() if isinstance(m, layers))
    to_image = [m for m in codec.g_s.modules() if isinstance(m, layers) and m.out_channels == 3]
    with torch.no_grad():
        to_y[-1].weight.mul_(5)
        to_y[-1].bias.mul_(5)
        from_y.weight.div_(5)
        to_image[-1].bias.add_(0.45)
    codec.prepare_for_coding()
    return codec


def photo(height: int, width: int) -> torch.Tensor:
    """A real photo's top-left ``height x width`` pixels (exact multiples of 1/255)."""
    return PhotoSamples(["coffee"], crop_size=192)[0]["image"][:, :height, :width]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_compressais_eval_model_counts_licexps_bytes_and_psnr(backbone) -> None:
    """``eval_model``'s ``inference`` pads the image centred with zeros to 64, codes it through
    the adapter and crops; licexp's ``code_image`` with ``padding=centred_zeros`` must write
    the same strings, and ``eval_model``'s rate and PSNR must be those of licexp's decode.
    MS-SSIM needs sides above 160, so the 170x180 image is padded to 192x192."""
    codec = codec_of(backbone)
    image = photo(170, 180)
    result = EVAL_MODEL.inference(as_compressai(codec), image)

    coding = code_image(codec, image, padding="centred_zeros")
    assert coding.decode_error == 0
    assert coding.x_hat.std() > 0.01  # an image, not a constant
    ours = unpack(coding.container).bitstreams.strings
    padded = pad_image(image[None], 64, "centred_zeros")
    with torch.no_grad():
        theirs = as_compressai(codec).compress(padded)["strings"]
    assert theirs == [ours["y"], ours["z"]]
    assert coding.string_bytes == sum(len(strings[0]) for strings in ours.values()) > 1000

    pixels = 170 * 180
    assert result["bpp"] == pytest.approx(8 * coding.string_bytes / pixels, rel=1e-12)
    # eval_model measures on 8-bit values, in float32 (resolution ~2e-6 dB at 30 dB)
    eight_bit = (coding.x_hat * 255).round() / 255
    assert result["psnr-rgb"] == pytest.approx(psnr(image, eight_bit), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mean_scale_small", "tiny_lic_small"])
def test_compress_decompress_round_trip_as_codec_py_does(backbone) -> None:
    """Strings and shape through plain Python values (as ``examples/codec.py`` writes and
    reads them) decode to licexp's own decode of the same image, for a batch of two."""
    codec = codec_of(backbone)
    model = as_compressai(codec)
    x = torch.stack([photo(128, 128), photo(192, 192)[:, 64:, 64:]])
    with torch.no_grad():
        out = model.compress(x)
        strings = [[bytes(s) for s in latent] for latent in out["strings"]]
        shape = tuple(int(side) for side in out["shape"])
        decoded = model.decompress(strings, shape)["x_hat"]
        bitstreams = codec.compress(x)
        reference = codec.decompress(bitstreams).clamp(0, 1)
    assert shape == (2, 2) == bitstreams.latent_size
    assert strings == [bitstreams.strings["y"], bitstreams.strings["z"]]
    assert torch.equal(decoded, reference)
    assert min(len(string) for string in strings[0]) > 500  # y says something
    assert strings[0][0] != strings[0][1]  # two images, not one twice
    assert (decoded[0] - decoded[1]).abs().max() > 0.01


def test_forward_answers_compressais_dict_with_the_codecs_likelihoods() -> None:
    codec = informative_codec()
    model = as_compressai(codec)
    x = photo(128, 128)[None]
    with torch.no_grad():
        out = model(x)
        reference = codec(x)
    assert set(out) == {"x_hat", "likelihoods"}
    assert set(out["likelihoods"]) == {"y", "z"}
    assert out["likelihoods"]["y"].shape == (1, 24, 8, 8)
    assert out["likelihoods"]["z"].shape == (1, 16, 2, 2)
    assert torch.equal(out["x_hat"], reference.x_hat)
    for name in ("y", "z"):
        assert torch.equal(out["likelihoods"][name], reference.likelihoods[name])


@pytest.mark.slow
def test_eval_models_entropy_estimation_reads_the_estimated_rate() -> None:
    """``eval_model --entropy-estimation`` sums the forward pass's likelihoods: the rate
    licexp estimates for the same hard latents."""
    codec = informative_codec()
    image = photo(192, 192)  # MS-SSIM needs sides above 160
    result = EVAL_MODEL.inference_entropy_estimation(as_compressai(codec), image)
    estimated = code_image(codec, image).estimated_bpp
    assert estimated > 0.5
    assert result["bpp"] == pytest.approx(estimated, rel=1e-5)


def test_training_helpers_reach_the_codec() -> None:
    """``update``, ``aux_loss``, ``state_dict`` / ``load_state_dict``, ``train`` / ``eval``
    act on the codec: weights loaded through the adapter code as the model they came from."""
    trained = informative_codec()
    model = as_compressai(MeanScaleHyperprior(16, 24, StraightThroughQuantization()))
    assert model.codec.training
    model.eval()
    assert not model.codec.training
    assert set(model.state_dict()) == set(trained.state_dict())
    model.load_state_dict(trained.state_dict())
    assert model.update(force=True)
    assert torch.equal(model.aux_loss(), trained.aux_loss())
    x = photo(64, 64)[None]
    with torch.no_grad():
        assert model.compress(x)["strings"][0] == trained.compress(x).strings["y"]


def test_bad_input_is_refused_with_a_clear_message() -> None:
    model = as_compressai(MeanScaleHyperprior(16, 24, StraightThroughQuantization()))
    with pytest.raises(ValueError, match=r"decodes 2 lists of strings \(y, z\)"):
        model.decompress([[b"\x00"]], (1, 1))
    with pytest.raises(TypeError, match="needs a licexp LearnedCodec, got Linear"):
        as_compressai(torch.nn.Linear(2, 2))
