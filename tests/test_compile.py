"""``model.compile``: torch.compile'd transforms in the training and validation steps.

On the CPU the tests compile with backends that generate no code (``aot_eager``, or one that
records the captured graphs and runs them as they are): Inductor's C++ code generation takes
minutes on a cold cache. Inductor itself is checked on a GPU (the ``gpu`` test below).
"""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import SMALL_MEAN_SCALE, code_and_decode, compose_train, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader

from licexp.backbones import MeanScaleHyperprior
from licexp.checkpoints import codec_from_checkpoint
from licexp.quant import StraightThroughQuantization
from licexp.training import CodecModule, RateDistortionLoss
from licexp.training.compiling import TRANSFORMS, compile_transforms, compiled_transforms_in

STE = {"_target_": "licexp.quant.StraightThroughQuantization"}


def small_codec(seed: int = 0) -> MeanScaleHyperprior:
    torch.manual_seed(seed)
    return MeanScaleHyperprior(N=16, M=24, quantizer=StraightThroughQuantization())


def outputs_and_gradients(
    codec: nn.Module, x: torch.Tensor, parameters: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """x_hat, the likelihoods and, in train mode, the gradients of ``parameters``."""
    codec.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same noise on z (drawn outside the transforms) in both passes
    output = codec(x)
    values = {"x_hat": output.x_hat, **{f"p_{k}": v for k, v in output.likelihoods.items()}}
    if codec.training:
        RateDistortionLoss(0.01)(output, x)["loss"].backward()
        values |= {f"grad {n}": p.grad for n, p in parameters.items() if p.grad is not None}
    return {name: value.detach().clone() for name, value in values.items()}


def compare_compiled_with_eager(device: str, backend: str) -> None:
    """The compiled transforms' outputs equal the eager ones to 1e-5, their gradients to 1e-5
    of each gradient's largest entry (a compiler may sum in another order)."""
    codec = small_codec().to(device)
    x = torch.rand(2, 3, 64, 64, device=device)
    compiled = compile_transforms(codec, {"backend": backend})
    assert sorted(compiled) == sorted(TRANSFORMS)
    keys, parameters = list(codec.state_dict()), dict(codec.named_parameters())
    for training in (True, False):
        codec.train(training)
        eager = outputs_and_gradients(codec, x, parameters)
        with compiled_transforms_in(codec, compiled):
            assert all(getattr(codec, name) is compiled[name] for name in TRANSFORMS)
            result = outputs_and_gradients(codec, x, parameters)
        assert result.keys() == eager.keys() and (not training or len(eager) > 20)
        for name, value in eager.items():
            scale = value.abs().max().item() if name.startswith("grad") else 1.0
            torch.testing.assert_close(result[name], value, atol=1e-5 * scale, rtol=0, msg=name)
    assert not any(isinstance(getattr(codec, name), type(compiled["g_a"])) for name in TRANSFORMS)
    assert list(codec.state_dict()) == keys, "the codec's own modules are back"


@pytest.mark.slow
def test_compiled_transforms_give_the_eager_outputs_and_gradients_in_train_and_eval() -> None:
    compare_compiled_with_eager("cpu", "aot_eager")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_on_cuda_gives_the_eager_outputs_and_gradients() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    compare_compiled_with_eager("cuda", "inductor")


class GraphRecorder:
    """A torch.compile backend that notes each captured graph (and whether gradients were on,
    i.e. training or validation) and runs it as it is."""

    def __init__(self) -> None:
        self.grad_enabled: list[bool] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.grad_enabled.append(torch.is_grad_enabled())
        return graph.forward


@pytest.mark.slow
def test_a_compiled_run_checkpoints_eager_keys_and_its_weights_code_real_bitstreams(
    tmp_path,
) -> None:
    recorder = GraphRecorder()
    module = CodecModule(
        small_codec(),
        RateDistortionLoss(0.01),
        optimizer=torch.optim.Adam,
        aux_optimizer=torch.optim.Adam,
        compile=True,
        compile_options={"backend": recorder},
    )
    module.run_config = {"backbone": SMALL_MEAN_SCALE, "quant": STE}
    seen: list[set[str]] = []  # the transforms' types at each codec call
    module.codec.register_forward_pre_hook(
        lambda codec, args: seen.append({type(getattr(codec, n)).__name__ for n in TRANSFORMS})
    )
    crops = DataLoader([{"image": torch.rand(3, 64, 64)} for _ in range(4)], batch_size=2)
    # validated at another size, in batches of 2 and 1: 4 graphs in training, then 4 per
    # validation batch size, 12 in all, more than TorchDynamo's default limit of 8 for the four
    photos = DataLoader([{"image": torch.rand(3, 128, 128)} for _ in range(3)], batch_size=2)
    trainer = quiet_trainer(
        max_steps=2, num_sanity_val_steps=0, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, crops, photos)

    assert len(seen) == 4 and all(types == {"OptimizedModule"} for types in seen)
    trained, validated = recorder.grad_enabled.count(True), recorder.grad_enabled.count(False)
    assert trained >= len(TRANSFORMS) and validated >= 2 * len(TRANSFORMS)
    assert not any(isinstance(getattr(module.codec, n), type(module.compiled_transforms["g_a"]))
                   for n in TRANSFORMS)  # fmt: skip

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in saved)
    codec, _ = codec_from_checkpoint(tmp_path / "last.ckpt")  # an eager codec, strict load
    assert type(codec.g_a).__name__ == "Sequential"
    loaded = dict(codec.named_parameters())
    for name, parameter in module.codec.named_parameters():  # the trained weights
        assert torch.equal(loaded[name], parameter), name
    reference, bitstreams, decoded = code_and_decode(codec, torch.rand(1, 3, 128, 128))
    assert sum(len(s[0]) for s in bitstreams.strings.values()) > 0
    assert torch.equal(decoded, reference.x_hat)


@pytest.mark.slow
def test_model_compile_composes_and_bad_settings_fail_clearly() -> None:
    codec = small_codec()
    cfg = compose_train(["model.compile=true", "model.compile_options.backend=aot_eager"])
    module = hydra.utils.instantiate(cfg.model, codec=codec)
    assert sorted(module.compiled_transforms) == sorted(TRANSFORMS)
    assert all(module.compiled_transforms[n]._orig_mod is getattr(codec, n) for n in TRANSFORMS)
    assert hydra.utils.instantiate(compose_train().model, codec=codec).compiled_transforms == {}
    with pytest.raises(ValueError, match="model.compile must be true or false"):
        CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam,
                    compile="yes")  # fmt: skip
    with pytest.raises(ValueError, match="model.compile_options: .*backend"):
        compile_transforms(codec, {"backend": "no_such_backend"})
    with pytest.raises(ValueError, match="none of the transforms g_a, g_s, h_a, h_s"):
        compile_transforms(nn.Linear(2, 2), {})
