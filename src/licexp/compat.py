"""A licexp codec behind CompressAI's model contract, for the tools written against it.

CompressAI's ``eval_model``, its ``examples/codec.py`` and CompressAI-Trainer call a model
as CompressAI's own classes answer::

    forward(x)                -> {"x_hat": x_hat, "likelihoods": {"y": ..., "z": ...}}
    compress(x)               -> {"strings": [y_strings, z_strings], "shape": z_size}
    decompress(strings, shape) -> {"x_hat": x_hat clamped to [0, 1]}

licexp's backbones answer with typed results (``CodecOutput``, ``Bitstreams``);
:func:`as_compressai` wraps one so that those tools run it unchanged, and licexp's types
stay inside licexp. Checked against compressai 1.2.8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from licexp.backbones import Bitstreams, LearnedCodec


class CompressAIModel(nn.Module):
    """``codec`` answering CompressAI's ``forward`` / ``compress`` / ``decompress`` contract.

    The strings are listed as CompressAI's hyperprior models list them, the latent ``y``
    first and the hyper latent ``z`` last: the reverse of licexp's decoding order
    (``codec.latent_names``), so that they equal a CompressAI model's strings on the same
    weights (:mod:`licexp.export`). ``shape`` is the hyper latent's spatial size, as there.
    Inputs need sides divisible by ``codec.downsampling_factor`` (64 for every backbone at
    CPU size, the multiple ``eval_model`` pads to; 256 for the paper-size Tiny-LIC).

    The state dict is the codec's own (no prefix), so checkpoints of either load into the
    other; ``eval()``, ``to()`` and the like reach the codec as its parent module's do.
    """

    def __init__(self, codec: LearnedCodec) -> None:
        super().__init__()
        self.codec = codec
        self.string_order = tuple(reversed(codec.latent_names))

    def forward(self, x: Tensor) -> dict[str, Any]:
        """The codec's forward pass (training approximation or hard) as CompressAI's dict."""
        output = self.codec(x)
        return {"x_hat": output.x_hat, "likelihoods": dict(output.likelihoods)}

    def compress(self, x: Tensor) -> dict[str, Any]:
        """One list of per-image strings per latent (``y`` first) and the hyper latent size."""
        bitstreams = self.codec.compress(x)
        return {
            "strings": [bitstreams.strings[name] for name in self.string_order],
            "shape": torch.Size(bitstreams.latent_size),
        }

    def decompress(
        self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]
    ) -> dict[str, Tensor]:
        """The reconstruction of :meth:`compress`'s ``strings`` and ``shape``, clamped to
        ``[0, 1]`` as CompressAI's models clamp it."""
        if len(strings) != len(self.string_order) or len(shape) != 2:
            raise ValueError(
                f"{type(self.codec).__name__} decodes {len(self.string_order)} lists of strings "
                f"({', '.join(self.string_order)}) and a 2-d hyper latent shape, got "
                f"{len(strings)} lists and shape {tuple(shape)}"
            )
        bitstreams = Bitstreams(
            {name: list(latent) for name, latent in zip(self.string_order, strings, strict=True)},
            latent_size=(int(shape[0]), int(shape[1])),
        )
        return {"x_hat": self.codec.decompress(bitstreams).clamp_(0, 1)}

    def update(
        self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False
    ) -> bool:
        """The codec's ``update``: builds the CDF tables of its strategy's symbols."""
        return self.codec.update(scale_table, force=force, update_quantiles=update_quantiles)

    def aux_loss(self) -> Tensor:
        """The codec's auxiliary loss (the ``EntropyBottleneck`` quantiles)."""
        return self.codec.aux_loss()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The codec's state dict, its own keys."""
        return self.codec.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """CompressAI's ``load_state_dict`` of the codec (the CDF buffers resized first)."""
        return self.codec.load_state_dict(state_dict, strict=strict)


def as_compressai(codec: LearnedCodec) -> CompressAIModel:
    """``codec`` behind CompressAI's model contract (:class:`CompressAIModel`)."""
    if not isinstance(codec, LearnedCodec):
        raise TypeError(f"as_compressai needs a licexp LearnedCodec, got {type(codec).__name__}")
    return CompressAIModel(codec)
