"""Real-bitstream evaluation: bit-exact decodes, bpp from bytes, files written."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import payload_bpp

from licexp.backbones import MeanScaleHyperprior, ScaleHyperprior
from licexp.data import DeadLeavesDataset
from licexp.evaluation.bitstream import BitstreamError
from licexp.evaluation.codec import code_image, decode_container, pad_to_multiple
from licexp.evaluation.evaluate import evaluate_codec, evaluate_images, mean_row
from licexp.quant import NoiseQuantization, StraightThroughQuantization
from licexp.training import RateDistortionLoss


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth natural-looking test image: upsampled low-resolution noise."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic")
    return image.clamp(0, 1)[0]


def train_toy_codec(steps: int = 300, lmbda: float = 0.01) -> MeanScaleHyperprior:
    """A tiny mean-scale model trained briefly on dead leaves (seconds on a CPU), on one
    thread: the same model whatever thread count the run or an earlier test left."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_toy_codec(steps, lmbda)
    finally:
        torch.set_num_threads(threads)


def _train_toy_codec(steps: int, lmbda: float) -> MeanScaleHyperprior:
    torch.manual_seed(0)
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    data = DeadLeavesDataset(length=steps * 4, size=64, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    main = [p for n, p in codec.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    optimizer, aux_optimizer = torch.optim.Adam(main, 3e-3), torch.optim.Adam(aux, 1e-2)
    loss_fn = RateDistortionLoss(lmbda=lmbda)
    for batch in loader:
        loss = loss_fn(codec(batch["image"]), batch["image"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        aux_optimizer.zero_grad()
        codec.aux_loss().backward()
        aux_optimizer.step()
    return codec.eval()


@pytest.fixture(scope="module")
def toy_codec() -> MeanScaleHyperprior:
    codec = train_toy_codec()
    codec.update(force=True)
    return codec


def test_padding_replicates_edges_to_the_next_multiple() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., :2, :3], x)
    assert torch.equal(padded[..., 3, :3], x[..., 1, :])
    assert torch.equal(pad_to_multiple(padded, 4), padded)


@pytest.mark.parametrize("size", [(97, 131), (64, 64)])
@pytest.mark.parametrize("backbone", [MeanScaleHyperprior, ScaleHyperprior])
@pytest.mark.parametrize("strategy", [NoiseQuantization, StraightThroughQuantization])
def test_two_images_round_trip_bit_exactly(size, backbone, strategy) -> None:
    codec = backbone(N=16, M=24, quantizer=strategy()).eval()
    codec.update(force=True)
    image = smooth_image(*size)
    coding = code_image(codec, image)
    assert coding.decode_error == 0
    assert coding.x_hat.shape == image.shape
    assert torch.equal(decode_container(codec, coding.container), coding.x_hat)
    pixels = size[0] * size[1]
    assert coding.bpp_file == pytest.approx(8 * len(coding.container) / pixels)
    assert coding.bpp == pytest.approx(payload_bpp(coding.container, pixels))


def test_actual_bpp_is_close_to_the_estimate_on_a_trained_model(toy_codec) -> None:
    image = smooth_image(256, 384, seed=3)
    coding = code_image(toy_codec, image)
    assert coding.decode_error == 0
    # rANS with 16-bit CDFs costs little over the model's estimate (the strings, what bpp
    # counts); the container's preamble and header (sizes, fingerprint, checksums, names)
    # are counted in bpp_file alone.
    assert coding.bpp == pytest.approx(payload_bpp(coding.container, 256 * 384))
    header_bytes = 11 + int.from_bytes(coding.container[5:7], "little")  # magic .. header CRC
    assert 256 * 384 * (coding.bpp_file - coding.bpp) / 8 == pytest.approx(header_bytes)
    assert coding.bpp == pytest.approx(coding.estimated_bpp, rel=0.05, abs=0.002)


def test_fitted_quantiles_are_the_learned_density_tails_and_median() -> None:
    """The aux loss is ``sum |logit F(q) - logit target|`` over the quantiles' targets
    (``tail_mass / 2``, 1/2, ``1 - tail_mass / 2`` per channel): 0 exactly when the
    quantiles are the learned CDF's tails and median. Gradient descent leaves it far from 0
    after a short run; the fit solves it to the bisection tolerance."""
    codec = train_toy_codec(steps=100)
    bottleneck = codec.hyper_latent.entropy_bottleneck
    targets = bottleneck.quantiles.numel()
    assert codec.aux_loss().item() / targets > 0.5, "the toy run left the quantiles unfitted"
    before = bottleneck.quantiles.detach().clone()
    codec.prepare_for_coding()
    assert not codec.training
    assert codec.aux_loss().item() / targets < 1e-2
    assert (bottleneck.quantiles[:, 0, 0] < bottleneck.quantiles[:, 0, 1]).all()
    assert (bottleneck.quantiles[:, 0, 1] < bottleneck.quantiles[:, 0, 2]).all()
    assert not torch.allclose(bottleneck.quantiles, before, atol=1e-2)


def test_corrupt_bitstream_is_refused_with_a_clear_error(toy_codec) -> None:
    coding = code_image(toy_codec, smooth_image(64, 64))
    with pytest.raises(BitstreamError, match="truncated"):
        decode_container(toy_codec, coding.container[:-3])


def test_evaluate_codec_writes_compressai_json_csv_bitstreams_and_reconstruction(
    toy_codec, tmp_path: Path
) -> None:
    dataset = [
        {"name": "a", "image": smooth_image(64, 96, seed=1)},
        {"name": "b", "image": smooth_image(80, 64, seed=2)},
    ]
    summary = evaluate_codec(toy_codec, dataset, tmp_path, name="toy", anchors=["jpeg"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["name"] == "toy"
    assert set(results["results"]) >= {
        "psnr-rgb",
        "ms-ssim-rgb",
        "bpp",
        "encoding_time",
        "decoding_time",
    }
    files = {name: (tmp_path / "bitstreams" / f"{name}.lic").read_bytes() for name in "ab"}
    pixels = {"a": 64 * 96, "b": 80 * 64}
    # bpp counts the strings, as CompressAI's eval_model does; bpp_file the whole file
    expected_bpp = sum(payload_bpp(files[name], pixels[name]) for name in "ab") / 2
    expected_bpp_file = sum(8 * len(files[name]) / pixels[name] for name in "ab") / 2
    assert results["results"]["bpp"][0] == pytest.approx(expected_bpp)
    assert results["results"]["bpp_file"][0] == pytest.approx(expected_bpp_file)
    assert summary["bpp"] == pytest.approx(expected_bpp)
    assert summary["bpp_file"] == pytest.approx(expected_bpp_file)
    assert summary["decode_error"] == 0
    assert (tmp_path / "reconstruction_a.png").is_file()
    rows = (tmp_path / "per_image.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("name,")
    anchor = json.loads((tmp_path / "anchor_jpeg.json").read_text())
    assert len(anchor["results"]["bpp"]) >= 5


def test_images_too_small_for_ms_ssim_are_measured_otherwise_and_named(tmp_path) -> None:
    """A 1x1 and a 10x10 image beside a normal one: every result is written; MS-SSIM is
    empty with the reason for the small ones and the mean MS-SSIM is the measurable one's."""
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=StraightThroughQuantization()).eval()
    dataset = [
        {"name": "dot", "image": torch.rand(3, 1, 1)},
        {"name": "tiny", "image": torch.rand(3, 10, 10)},
        {"name": "photo", "image": smooth_image(64, 96)},
    ]
    summary = evaluate_codec(codec, dataset, tmp_path, name="toy", anchors=["jpeg"])
    with open(tmp_path / "per_image.csv") as file:
        rows = {row["name"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"dot", "tiny", "photo"}
    for name in ("dot", "tiny"):
        assert rows[name]["ms_ssim"] == "" and "too small" in rows[name]["note"]
        assert float(rows[name]["psnr"]) > 0 and float(rows[name]["bpp"]) > 0
    assert summary["ms_ssim"] == pytest.approx(float(rows["photo"]["ms_ssim"]))
    assert summary["psnr"] == pytest.approx(sum(float(r["psnr"]) for r in rows.values()) / 3)
    assert json.loads((tmp_path / "results.json").read_text())["results"]["ms-ssim-rgb"] == [
        pytest.approx(summary["ms_ssim"])
    ]


def test_a_decode_that_differs_from_the_encoder_side_is_logged_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A decoder out of sync with the encoder (here: the second image's decoded latent
    moved by 0.01) is named in an error and reported in its row; the other image is not."""
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=StraightThroughQuantization()).eval()
    decompress = codec.latent.decompress
    decoded_latents = []

    def drifting_decompress(*args):
        decoded = decompress(*args)
        decoded_latents.append(decoded)
        return decoded + 0.01 if len(decoded_latents) == 2 else decoded

    codec.latent.decompress = drifting_decompress
    images = [("first", smooth_image(64, 64, seed=1)), ("second", smooth_image(64, 64, seed=2))]
    with caplog.at_level(logging.ERROR, logger="licexp.evaluation.evaluate"):
        rows = evaluate_images(codec, images, tmp_path, reconstructions=0)
    assert len(decoded_latents) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("DECODE MISMATCH on second:") and "0.01" in errors[0]
    assert rows[0]["decode_error"] == 0
    assert rows[1]["decode_error"] == pytest.approx(0.01, rel=1e-3)
    assert mean_row(rows)["decode_error"] == rows[1]["decode_error"]
