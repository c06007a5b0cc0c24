"""Rate-distortion figures: PSNR and MS-SSIM (dB) against bits per pixel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from licexp.evaluation.metrics import ms_ssim_db  # noqa: E402
from licexp.evaluation.results import RDCurve  # noqa: E402


def _ms_ssim_db(curve: RDCurve) -> list[float]:
    """MS-SSIM in dB from ``ms-ssim-rgb``, else from a paper's ``ms-ssim-db-rgb``, else ``[]``."""
    if curve.ms_ssim:
        return [ms_ssim_db(v) for v in curve.ms_ssim]
    return [float(v) for v in curve.extra.get("ms-ssim-db-rgb", [])]


def plot_rd(
    curves: Sequence[RDCurve],
    path: str | Path,
    title: str = "",
    anchors: Sequence[RDCurve] = (),
) -> None:
    """Draws PSNR-RGB and MS-SSIM (dB, ``-10 log10(1 - MS-SSIM)``) against bpp.

    Curves of one point are drawn as markers, longer ones as lines with markers; ``anchors``
    (published reference curves) as dashed lines with small markers. A curve keeps its colour
    in both panels.
    """
    figure, (psnr_axis, ssim_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    styled = [(curve, {"marker": "o"}) for curve in curves]
    styled += [(anchor, {"marker": ".", "linestyle": "--", "alpha": 0.8}) for anchor in anchors]
    for curve, style in styled:
        if len(curve) < 2:
            style = {**style, "linestyle": "none"}
        (line,) = psnr_axis.plot(curve.bpp, curve.psnr, label=curve.name, **style)
        ms_ssim_values = _ms_ssim_db(curve)
        if ms_ssim_values:
            ssim_axis.plot(curve.bpp, ms_ssim_values, color=line.get_color(), **style)
    for axis, label in ((psnr_axis, "PSNR-RGB (dB)"), (ssim_axis, "MS-SSIM (dB)")):
        axis.set_xlabel("bits per pixel")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    psnr_axis.legend(fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
