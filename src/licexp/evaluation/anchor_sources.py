"""Where an evaluation's classical anchors come from: measured ``live`` or ``published``.

- ``live``: Pillow's codecs measured on the evaluated images
  (:mod:`licexp.evaluation.anchors`), through the cache of :mod:`~.anchor_cache`, so that
  a sweep measures them once.
- ``published``: CompressAI's published Kodak results, one CompressAI-schema file per codec
  in a folder, ``<codec>.json``: ``jpeg``, ``webp``, ``jpeg2000`` and the codecs Pillow
  lacks (``bpg_444_x265_ycbcr``, ``vtm``, ``hm``, ``av1``). They are means over the 24
  Kodak images at full size, so they are used only when the evaluated images are those
  (named ``kodim01`` ... ``kodim24``, 768x512 or 512x768). On other images the anchors are
  measured live instead, with a warning, and the codecs Pillow lacks are left out: the
  published numbers would compare the model with other images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from licexp.data.folder import KODAK_NUM_IMAGES
from licexp.evaluation.anchor_cache import cached_anchor_curve
from licexp.evaluation.anchors import ANCHOR_CODECS, AnchorResult
from licexp.evaluation.results import load_rd_curve

__all__ = [
    "ANCHOR_SOURCES",
    "check_anchor_source",
    "KODAK_ANCHOR_DIR",
    "is_kodak",
    "published_anchor",
    "evaluation_anchors",
]

log = logging.getLogger(__name__)

#: The values of the ``anchors_source`` setting.
ANCHOR_SOURCES: tuple[str, ...] = ("live", "published")
#: CompressAI's published Kodak results beside the repository (``../shared``), if there.
KODAK_ANCHOR_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "anchors" / "kodak"
KODAK_NAMES = frozenset(f"kodim{index:02d}" for index in range(1, KODAK_NUM_IMAGES + 1))
KODAK_SIZES = frozenset({(512, 768), (768, 512)})


def is_kodak(images: Sequence[tuple[str, Tensor]]) -> bool:
    """Whether ``images`` are the 24 Kodak images at full size, each once."""
    names = [name for name, _ in images]
    return (
        len(names) == len(KODAK_NAMES)
        and set(names) == KODAK_NAMES
        and all(tuple(image.shape[-2:]) in KODAK_SIZES for _, image in images)
    )


def published_anchor(codec: str, folder: str | Path) -> AnchorResult:
    """``<folder>/<codec>.json`` as an anchor named ``published-<codec>``, without per-image
    rows (the files hold means only).

    Raises:
        FileNotFoundError: no such folder or file; the message lists the folder's codecs.
        ValueError: the file is not a CompressAI-schema curve with bpp and PSNR-RGB.
    """
    folder = Path(folder)
    path = folder / f"{codec}.json"
    if not path.is_file():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no folder of published anchors at {folder} (anchors_source=published): point "
                "published_anchors to a copy of CompressAI's results/image/kodak"
            )
        available = sorted(file.stem for file in folder.glob("*.json"))
        raise FileNotFoundError(f"no published anchor {codec!r} in {folder}; it has {available}")
    curve = load_rd_curve(path, "published anchor")
    curve.description = f"CompressAI's published Kodak results ({path.name}): {curve.description}"
    curve.name = f"published-{codec}"
    curve.metadata.setdefault("licexp", {})["eval_set"] = "Kodak"  # as licexp.rd marks them
    return AnchorResult(rows=[], curve=curve)


def check_anchor_source(source: str) -> None:
    """Raises a clear error unless ``source`` is one of :data:`ANCHOR_SOURCES` (a training
    run checks it before training, not at the evaluation after it)."""
    if source not in ANCHOR_SOURCES:
        raise ValueError(f"anchors_source must be one of {list(ANCHOR_SOURCES)}, got {source!r}")


def evaluation_anchors(
    images: Sequence[tuple[str, Tensor]],
    codecs: Sequence[str],
    source: str = "live",
    *,
    cache_dir: str | Path | None = None,
    published_dir: str | Path | None = None,
) -> dict[str, AnchorResult]:
    """Each of ``codecs``' anchor for ``images``, from ``source`` (see the module docstring).

    Args:
        cache_dir: where live anchors are cached; ``None``: not cached.
        published_dir: the folder of published anchors; ``None``: :data:`KODAK_ANCHOR_DIR`.

    Raises:
        ValueError: ``source`` is not one of :data:`ANCHOR_SOURCES`.
    """
    check_anchor_source(source)
    if source == "published":
        if is_kodak(images):
            folder = KODAK_ANCHOR_DIR if published_dir is None else Path(published_dir)
            return {codec: published_anchor(codec, folder) for codec in codecs}
        unmeasurable = [codec for codec in codecs if codec not in ANCHOR_CODECS]
        log.warning(
            "anchors_source=published needs the 24 Kodak images at full size; these %d images "
            "are not: measuring the anchors live instead%s",
            len(images),
            f", without {', '.join(unmeasurable)} (not in Pillow)" if unmeasurable else "",
        )
        codecs = [codec for codec in codecs if codec in ANCHOR_CODECS]
    results = {}
    for codec in codecs:
        log.info("Anchor %s, live on the same %d images", codec, len(images))
        results[codec] = cached_anchor_curve(images, codec, cache_dir=cache_dir)
    return results
