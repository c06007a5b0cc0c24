"""Jiang et al.'s codec: Tiny-LIC with FExM, FRM, ICRSA and FEnM (Fig. 2).

Jiang, Yang, Zhang, Li and Yang, "Interleaved block-based learned image compression with
feature enhancement and quantization error compensation" (seed 001). The encoder is

    x -> FExM -> FRM -> f -> CRM -> RNAB -> [conv -> CRM -> RNAB] x 3 -> y

(FExM's split and features, :mod:`.extraction`; the ARB and the fold back to 2D,
:mod:`.refinement`), the decoder its mirror ending in

    ... -> RNAB -> CRM -> f_hat -> FEnM -> f_e_hat -> inverse FExM -> x_hat

(:mod:`.enhancement`), and the hyper transforms and the multistage context model are
Tiny-LIC's with ICRSA units (:mod:`licexp.backbones.concatenated_residual`). The QECM is a
quantisation strategy (``quant=fourier_qecm``), so it composes with any backbone.

FExM replaces ``g_a``'s first stride-2 convolution by the stride-``b`` split, so ``f``
and ``y`` sit at ``1/b`` and ``1/(8 b)`` of the image (Tiny-LIC's ``1/2`` and ``1/16`` for
``b = 2``), and images are padded to multiples of ``32 b * 2^j``
(:func:`~licexp.backbones.tiny_lic.padding_multiple`). ``forward`` returns the refined
feature ``f`` and the enhanced ``f_e_hat`` in ``CodecOutput.features`` for the feature loss
(Eq. 17) when FEnM is on.

FEnM starts as the identity and the convolution beside each CRM at half its weight, so
that the untrained codec's activations are, like Tiny-LIC's, of order one
(:mod:`licexp.backbones.concatenated_residual`, :mod:`.enhancement`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from licexp.backbones.jiang.enhancement import FeatureEnhancement
from licexp.backbones.jiang.extraction import FeatureExtraction, InverseFeatureExtraction
from licexp.backbones.jiang.refinement import AttentionRefinementBlock, StackToFeature
from licexp.backbones.tiny_lic import TinyLIC
from licexp.quant import QuantizationStrategy


class JiangLIC(TinyLIC):
    """Tiny-LIC with Jiang et al.'s modules; every module a switch, for Table IV and V.

    Args:
        unit: ``icrsa`` (Proposed), ``icrsa_conv`` (Proposed-Tiny) or ``icsa`` (Tiny-LIC's).
        patch_size: ``b`` (2 for Kodak, 3 for CLIC in the paper).
        feature_channels: width ``C`` of the FExM features and of the FRM (the paper's
            ``N = 128`` contradicts its Tables III and IV; ``conf/backbone/jiang.yaml``).
        extraction_convolutions: 3x3 convolutions per sub-image (2; Proposed-Tiny 1).
        refinement: the FRM's attention refinement block (off: the stacked features are
            folded to ``f`` directly, Table IV's "+FExM" row).
        front_convolutions, front_kernel, residual_blocks, residual_levels: the ARB
            (:class:`~licexp.backbones.jiang.refinement.AttentionRefinementBlock`).
        enhancement: FEnM after the decoder (and the features of the feature loss).
        dense_blocks, dense_layers, dense_growth: FEnM's dense blocks.
        **tiny_lic: the arguments of :class:`~licexp.backbones.tiny_lic.TinyLIC`.
    """

    crm_transparent = (FeatureEnhancement,)  # FEnM starts as an identity

    def __init__(
        self,
        unit: str = "icrsa",
        patch_size: int = 2,
        feature_channels: int = 32,
        extraction_convolutions: int = 2,
        refinement: bool = True,
        front_convolutions: int = 2,
        front_kernel: int = 3,
        residual_blocks: int = 3,
        residual_levels: int = 2,
        enhancement: bool = True,
        dense_blocks: int = 2,
        dense_layers: int = 4,
        dense_growth: int = 32,
        *,
        quantizer: QuantizationStrategy,
        **tiny_lic: Any,
    ) -> None:
        N = tiny_lic.get("N", 128)
        frames = patch_size**2 + 1
        stem: list[nn.Module] = [
            FeatureExtraction(feature_channels, patch_size, extraction_convolutions)
        ]
        if refinement:
            stem.append(
                AttentionRefinementBlock(
                    feature_channels,
                    front_convolutions,
                    front_kernel,
                    residual_blocks,
                    residual_levels,
                )
            )
        stem.append(StackToFeature(feature_channels, frames, N))
        head: list[nn.Module] = []
        if enhancement:
            head.append(FeatureEnhancement(N, dense_blocks, dense_layers, dense_growth))
        head.append(
            InverseFeatureExtraction(N, feature_channels, patch_size, extraction_convolutions)
        )
        super().__init__(
            unit=unit,
            quantizer=quantizer,
            stem=nn.Sequential(*stem),
            stem_stride=patch_size,
            head=head,
            **tiny_lic,
        )
        self.enhances_features = enhancement
        self.patch_size = patch_size
