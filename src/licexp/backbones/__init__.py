"""Codec backbones: one module per model family, one Hydra config each in ``conf/backbone/``."""

from licexp.backbones.base import Bitstreams, CodecOutput, LearnedCodec
from licexp.backbones.hyperprior import MeanScaleHyperprior, ScaleHyperprior
from licexp.backbones.jiang import JiangLIC
from licexp.backbones.tiny_lic import TinyLIC

__all__ = [
    "Bitstreams",
    "CodecOutput",
    "JiangLIC",
    "LearnedCodec",
    "MeanScaleHyperprior",
    "ScaleHyperprior",
    "TinyLIC",
]
