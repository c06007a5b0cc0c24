"""A diverging run stops at the first non-finite term and keeps its last good state."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from licexp.backbones import MeanScaleHyperprior
from licexp.callbacks import LastCheckpoint
from licexp.quant import NoiseQuantization
from licexp.training import CodecModule, DivergenceError, RateDistortionLoss


class PoisonedImages(Dataset):
    """Random 64x64 images; the one at ``poisoned`` holds a NaN (a broken input file)."""

    def __init__(self, length: int, poisoned: int) -> None:
        self.length, self.poisoned = length, poisoned

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index))
        if index == self.poisoned:
            image[0, 0, 0] = torch.nan
        return {"image": image}


def test_the_first_non_finite_loss_stops_the_run_before_its_step(tmp_path) -> None:
    torch.manual_seed(0)
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    module = CodecModule(codec, RateDistortionLoss(0.01), torch.optim.Adam, torch.optim.Adam)
    checkpoints = LastCheckpoint(tmp_path, every_n_steps=1)
    trainer = L.Trainer(
        max_steps=10,
        accelerator="cpu",
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(DivergenceError, match=r"at step 3: non-finite loss") as error:
        trainer.fit(module, DataLoader(PoisonedImages(10, poisoned=2), batch_size=1))
    assert "gradient norm" in str(error.value)  # a NaN loss has NaN gradients too
    assert str(error.value).endswith(
        f"; resume from the last good checkpoint with ckpt_path={tmp_path / 'last.ckpt'} "
        "and a lower learning rate (model.optimizer.lr=0.0001 instead of 0.001)"
    )
    assert trainer.global_step == 2, "the diverging step was not taken"
    assert all(torch.isfinite(p).all() for p in codec.parameters())
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_a_divergence_before_any_checkpoint_says_to_start_again_with_a_lower_rate() -> None:
    codec = MeanScaleHyperprior(N=16, M=24, quantizer=NoiseQuantization())
    optimizer = partial(torch.optim.Adam, lr=2e-3)
    module = CodecModule(codec, RateDistortionLoss(0.01), optimizer, torch.optim.Adam)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(DivergenceError) as error:
        trainer.fit(module, DataLoader(PoisonedImages(2, poisoned=0), batch_size=1))
    assert str(error.value) == (
        "training diverged at step 1: non-finite loss, gradient norm. The step was not taken, "
        "the weights are those of step 0; no checkpoint was written before it: start again "
        "with a lower learning rate (model.optimizer.lr=0.0002 instead of 0.002)"
    )
