"""Procedural dead-leaves images: an endless, download-free training set.

The dead-leaves model (Matheron 1968; Lee, Mumford & Huang 2001, "Occlusion models for natural
images") stacks opaque discs ("leaves") until the plane is covered. With leaf radii drawn from
the power law ``p(r) ∝ r^(-alpha)`` on ``[r_min, r_max]`` and ``alpha ≈ 3`` the images are
approximately scale invariant, like natural images (Gousseau & Roueff 2007), and they are a
standard synthetic pre-training set (Baradad et al. 2021, "Learning to see by looking at noise").

Sampling, as implemented here:

* Leaves form a stationary Poisson process on the pixel grid, restricted to the image window:
  a leaf gets a radius ``r ~ p(r)`` (inverse-CDF sampling, :func:`sample_radii`), covers the
  pixels at offsets ``dy^2 + dx^2 <= r^2`` from its centre, and its centre is uniform on the
  window dilated by ``R = floor(r)``; it is kept with probability
  ``(size + 2R)^2 / (size + 2 R_max)^2`` (the share of positions from which a leaf of that reach
  touches the window). Image statistics therefore do not depend on the position in the image,
  and corners are covered like the centre.
* Leaves are laid front to back: a leaf only paints pixels that no earlier leaf covers, and
  generation stops when every pixel is covered. The rare pixels still uncovered after
  ``max_leaves`` proposals show one last leaf that lies behind all others.
* Colours are drawn in HSV, with statistics loosely resembling natural images: hue uniform on
  ``[0, 1)``, saturation ``~ Beta(1, 3)`` (mostly muted colours, mean 0.25), value
  ``~ Beta(1.5, 1.5)`` (broad, covering dark to bright).
* ``textured=True`` modulates each leaf's brightness (added equally to R, G, B) by a linear
  gradient across the leaf (peak amplitude ``U(0, 0.15)`` at the rim, random direction) plus a
  sinusoidal grating (amplitude ``U(0, 0.06)``, wavelength ``U(3, 30)`` pixels, random
  orientation and phase), then clips to ``[0, 1]``; leaves are then not flat patches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

# Leaf proposals screened together against the coverage so far: small batches while coverage
# changes fast, growing as the uncovered area shrinks.
_FIRST_BATCH = 1024
_MAX_BATCH = 16_384


def sample_radii(
    rng: np.random.Generator, n: int, min_radius: float, max_radius: float, alpha: float
) -> np.ndarray:
    """Draw ``n`` radii from ``p(r) ∝ r^(-alpha)`` on ``[min_radius, max_radius]``.

    Inverse-CDF sampling: with ``u ~ U(0, 1)`` and ``b = 1 - alpha``,
    ``r = (r_min^b + u (r_max^b - r_min^b))^(1/b)``, or ``r = r_min (r_max/r_min)^u`` when
    ``alpha = 1``.
    """
    u = rng.random(n)
    if min_radius == max_radius:
        return np.full(n, float(min_radius))
    if alpha == 1.0:
        return min_radius * (max_radius / min_radius) ** u
    b = 1.0 - alpha
    low, high = min_radius**b, max_radius**b
    return (low + u * (high - low)) ** (1.0 / b)


def dead_leaves_image(
    rng: np.random.Generator,
    size: int,
    min_radius: float = 2.0,
    max_radius: float = 100.0,
    alpha: float = 3.0,
    textured: bool = True,
    max_leaves: int = 500_000,
) -> np.ndarray:
    """Generate one ``size x size`` dead-leaves image as ``float32`` ``[H, W, 3]`` in ``[0, 1]``.

    See the module docstring for the model; every random number comes from ``rng``.
    ``max_leaves`` bounds the number of leaves proposed (a safety net; a 256 x 256 image with the
    default radii needs about 25 000).
    """
    labels, centres, radii = leaf_labels(rng, size, min_radius, max_radius, alpha, max_leaves)
    n = len(radii)
    hue, saturation, value = rng.random(n), rng.beta(1.0, 3.0, n), rng.beta(1.5, 1.5, n)
    colours = _hsv_to_rgb(hue, saturation, value).astype(np.float32)
    image = colours[labels]
    if textured:
        image += _leaf_textures(rng, labels, centres, radii)[..., None]
        np.clip(image, 0.0, 1.0, out=image)
    return image


def leaf_labels(
    rng: np.random.Generator,
    size: int,
    min_radius: float = 2.0,
    max_radius: float = 100.0,
    alpha: float = 3.0,
    max_leaves: int = 500_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay leaves front to back until the window is covered; return who is visible where.

    Returns ``labels`` (``int32 [size, size]``, the visible leaf at each pixel, numbered from 0 in
    front-to-back order), and the ``(y, x)`` centres ``[n, 2]`` and radii ``[n]`` of those ``n``
    leaves. If pixels are still uncovered after ``max_leaves`` proposals, they get label ``n - 1``:
    a background leaf (centre of the window, radius ``size``) behind all others.

    Leaf centres are on the pixel grid, so a leaf of radius ``r`` covers the pixels at integer
    offsets ``(dy, dx)`` with ``dy^2 + dx^2 <= r^2``. Each batch of proposals is screened against
    the coverage at the start of the batch (leaf bounding boxes, then each leaf's rows, through
    the summed-area table of uncovered pixels), so leaves hidden behind earlier ones cost almost
    nothing; among the survivors, each pixel takes the earliest leaf covering it (a z-buffer).
    """
    labels = np.full(size * size, -1, dtype=np.int32)
    depth = np.full(size * size, np.iinfo(np.int32).max, dtype=np.int32)
    all_centres: list[np.ndarray] = []
    all_radii: list[np.ndarray] = []
    proposed = accepted = 0
    rmax = int(max_radius)
    batch = _FIRST_BATCH
    while proposed < max_leaves:
        free = (labels == -1).reshape(size, size)
        row_sums = np.zeros((size + 1, size + 1), dtype=np.int32)
        np.cumsum(free, axis=1, out=row_sums[1:, 1:])
        box_sums = np.cumsum(row_sums, axis=0, dtype=np.int32)
        uncovered = int(box_sums[-1, -1])
        if uncovered == 0:
            break
        batch = min(max(batch, _FIRST_BATCH * size * size // uncovered), _MAX_BATCH)
        batch = min(batch, max_leaves - proposed)

        # Proposals: radius from p(r); integer centre uniform on the window dilated by the
        # leaf's reach R = floor(r); kept with probability |dilated window| / |largest one|.
        radii = sample_radii(rng, batch, min_radius, max_radius, alpha)
        reach = radii.astype(np.int64)
        keep = rng.random(batch) * (size + 2 * rmax) ** 2 < (size + 2 * reach) ** 2
        proposed += batch
        radii, reach = radii[keep], reach[keep]
        span = (size + 2 * reach)[:, None]
        centres = (rng.random((len(radii), 2)) * span).astype(np.int64) - reach[:, None]
        all_radii.append(radii)
        all_centres.append(centres)
        leaf_ids = np.arange(accepted, accepted + len(radii), dtype=np.int32)
        accepted += len(radii)

        # Keep leaves whose (window-clipped) bounding box holds an uncovered pixel.
        y0, x0 = np.clip(centres - reach[:, None], 0, size).T
        y1, x1 = np.clip(centres + reach[:, None] + 1, 0, size).T
        in_box = box_sums[y1, x1] - box_sums[y0, x1] - box_sums[y1, x0] + box_sums[y0, x0]
        hit = in_box > 0
        radii, reach, centres, leaf_ids = radii[hit], reach[hit], centres[hit], leaf_ids[hit]

        # Rows of each disc: dy in [-R, R], half-width floor(sqrt(r^2 - dy^2)), clipped to the
        # window; keep the rows that hold an uncovered pixel.
        rows_per_leaf = 2 * reach + 1
        owner = np.repeat(np.arange(len(reach)), rows_per_leaf)
        first_row = np.cumsum(rows_per_leaf) - rows_per_leaf
        dy = np.arange(len(owner)) - first_row[owner] - reach[owner]
        half = np.floor(np.sqrt(radii[owner] ** 2 - dy**2)).astype(np.int64)
        y = centres[owner, 0] + dy
        x_lo = np.maximum(centres[owner, 1] - half, 0)
        x_hi = np.minimum(centres[owner, 1] + half + 1, size)
        valid = (y >= 0) & (y < size) & (x_hi > x_lo)
        y, x_lo, x_hi, owner = y[valid], x_lo[valid], x_hi[valid], owner[valid]
        valid = row_sums[y + 1, x_hi] > row_sums[y + 1, x_lo]
        y, x_lo, x_hi, owner = y[valid], x_lo[valid], x_hi[valid], owner[valid]

        # Pixels of the surviving rows; each uncovered pixel takes the earliest leaf.
        run_length = x_hi - x_lo
        run_start = np.cumsum(run_length) - run_length
        run_offset = y * size + x_lo - run_start
        pixel = np.arange(int(run_length.sum())) + np.repeat(run_offset, run_length)
        leaf = np.repeat(leaf_ids[owner], run_length)
        open_ = labels[pixel] == -1
        pixel, leaf = pixel[open_], leaf[open_]
        np.minimum.at(depth, pixel, leaf)
        labels[pixel] = depth[pixel]

    uncovered_pixels = labels == -1
    if uncovered_pixels.any():
        labels[uncovered_pixels] = accepted
        all_centres.append(np.array([[size // 2, size // 2]]))
        all_radii.append(np.array([float(size)]))
    centres_all = np.concatenate(all_centres)
    radii_all = np.concatenate(all_radii)
    # Renumber the visible leaves 0..n-1, keeping their front-to-back order.
    visible = np.zeros(len(radii_all), dtype=bool)
    visible[labels] = True
    renumber = (np.cumsum(visible) - 1).astype(np.int32)
    return renumber[labels].reshape(size, size), centres_all[visible], radii_all[visible]


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB for arrays of shape ``[n]``; returns ``[n, 3]``."""
    sector = hue * 6.0
    k = (np.array([5.0, 3.0, 1.0]) + sector[:, None]) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * ramp)


def _leaf_textures(
    rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Per-pixel brightness offsets: a linear gradient plus a grating, parameters per leaf."""
    n = len(radii)
    gradient_angle = rng.random(n) * 2 * np.pi
    gradient_gain = rng.uniform(0.0, 0.15, n) / radii
    grating_angle = rng.random(n) * 2 * np.pi
    wavenumber = 2 * np.pi / rng.uniform(3.0, 30.0, n)
    phase = rng.random(n) * 2 * np.pi
    amplitude = rng.uniform(0.0, 0.06, n)

    # Per-leaf coefficients of  g_y*y + g_x*x + offset  and of the grating's phase k_y*y + k_x*x.
    g_y, g_x = gradient_gain * np.sin(gradient_angle), gradient_gain * np.cos(gradient_angle)
    offset = -(g_y * centres[:, 0] + g_x * centres[:, 1])
    k_y, k_x = wavenumber * np.sin(grating_angle), wavenumber * np.cos(grating_angle)
    coefficients = np.stack([g_y, g_x, offset, k_y, k_x, phase, amplitude]).astype(np.float32)

    size = labels.shape[0]
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    c_gy, c_gx, c_off, c_ky, c_kx, c_phase, c_amp = coefficients[:, labels]
    texture = c_gy * y + c_gx * x + c_off
    texture += c_amp * np.sin(c_ky * y + c_kx * x + c_phase)
    return texture


class DeadLeavesDataset(Dataset):
    """Dead-leaves images generated on the fly; item ``i`` depends only on ``(seed, i)``.

    Each item's generator is ``numpy.random.default_rng([seed, i])``, so an item is identical
    whichever worker or process draws it, and different indices give different images.

    Args:
        length: number of items (the images themselves are never stored).
        size: side of the square images, in pixels.
        seed: non-negative base seed.
        min_radius, max_radius: range of leaf radii, in pixels.
        alpha: exponent of the radius law ``p(r) ∝ r^(-alpha)``.
        textured: add a gradient and a grating to each leaf (see the module docstring).
        noise_std: standard deviation of i.i.d. Gaussian noise added to every pixel and
            channel (then clipped to ``[0, 1]``), as a camera's sensor adds: photographs have
            no perfectly flat area, and a model that learns from flat leaves that a latent
            is exactly 0 there predicts scales at the lower bound where a photo's is not.

    Items are ``{"image": FloatTensor[3, size, size] in [0, 1], "name": "dead_leaves_000042"}``.
    """

    def __init__(
        self,
        length: int = 10_000,
        size: int = 256,
        seed: int = 0,
        min_radius: float = 2.0,
        max_radius: float = 100.0,
        alpha: float = 3.0,
        textured: bool = True,
        noise_std: float = 0.0,
    ) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if length < 0 or size < 1 or seed < 0:
            raise ValueError(
                f"need length >= 0, size >= 1, seed >= 0; got {length}, {size}, {seed}"
            )
        if not 0 < min_radius <= max_radius:
            raise ValueError(
                f"need 0 < min_radius <= max_radius; got min_radius={min_radius}, "
                f"max_radius={max_radius}"
            )
        self.length = length
        self.size = size
        self.seed = seed
        self.min_radius = min_radius
        self.max_radius = max_radius
        self.alpha = alpha
        self.textured = textured
        self.noise_std = noise_std

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} dead-leaves images")
        rng = np.random.default_rng([self.seed, index])
        image = dead_leaves_image(
            rng,
            self.size,
            min_radius=self.min_radius,
            max_radius=self.max_radius,
            alpha=self.alpha,
            textured=self.textured,
        )
        if self.noise_std > 0:
            image += rng.normal(0.0, self.noise_std, image.shape).astype(np.float32)
            np.clip(image, 0.0, 1.0, out=image)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "name": f"dead_leaves_{index:06d}"}
