"""Rate-distortion figures: PSNR and MS-SSIM (dB) against bits per pixel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from licexp.evaluation.metrics import ms_ssim_db  # noqa: E402
from licexp.evaluation.results import RDCurve  # noqa: E402


def plot_rd(curves: Sequence[RDCurve], path: str | Path, title: str = "") -> None:
    """Draws PSNR-RGB and MS-SSIM (dB, ``-10 log10(1 - MS-SSIM)``) against bpp.

    Curves of one point are drawn as markers, longer ones as lines with markers.
    """
    figure, (psnr_axis, ssim_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve in curves:
        style = {"marker": "o", "linestyle": "-" if len(curve) > 1 else "none"}
        psnr_axis.plot(curve.bpp, curve.psnr, label=curve.name, **style)
        if curve.ms_ssim:
            ssim_axis.plot(curve.bpp, [ms_ssim_db(v) for v in curve.ms_ssim], **style)
    for axis, label in ((psnr_axis, "PSNR-RGB (dB)"), (ssim_axis, "MS-SSIM (dB)")):
        axis.set_xlabel("bits per pixel")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    psnr_axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
