"""Jiang et al.'s interleaved block-based codec (seed 001): FExM, FRM, ICRSA, FEnM on Tiny-LIC."""

from licexp.backbones.jiang.codec import JiangLIC

__all__ = ["JiangLIC"]
