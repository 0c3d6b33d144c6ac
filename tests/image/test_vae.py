"""The convolutional VAE: shapes, the ELBO in nats per image, KL warm-up, learning, generation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from helpers import error_message
from muselab.core import rundir as files
from muselab.core.checkpoint import load_tensors
from muselab.core.config import TrainConfig, build_config
from muselab.core.errors import ConfigError, ControlError
from muselab.core.rundir import RunDir
from muselab.core.trainer import Trainer
from muselab.image.vae import EVAL_SEED, VAE, VAEConfig


def make_vae(seed: int = 0, **overrides) -> VAE:
    settings = dict(size=8, width=8, latent_dim=4)
    settings.update(overrides)
    torch.manual_seed(seed)
    return VAE(VAEConfig(**settings))


def toy_batch(n: int = 16, seed: int = 0, channels: int = 3) -> dict[str, torch.Tensor]:
    """8x8 images, each one flat colour out of two, with the colour's index as the label."""
    gen = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.8, -0.8, -0.8], [-0.8, -0.8, 0.8]])[:, :channels]
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = palette[labels][:, :, None, None].expand(-1, -1, 8, 8).contiguous()
    return {"image": images + 0.05 * torch.randn(images.shape, generator=gen), "label": labels}


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_shapes_follow_the_size(size):
    vae = make_vae(size=size, channels=1)
    x = torch.rand(2, 1, size, size) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    assert vae.reconstruct(x).shape == x.shape
    samples = vae.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, size, size) and samples.min() >= -1 and samples.max() <= 1
    strided = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == int(math.log2(size)) - 2


def test_256_builds():
    vae = VAE(VAEConfig(size=256, width=4, latent_dim=4))
    assert vae.sample(1).shape == (1, 3, 256, 256)


def test_bad_size_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        build_config(VAEConfig, [{"size": 24}])
    assert "power of two" in error_message(err)
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_vae(conditional=True, num_classes=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_eval_step_is_the_negative_elbo_computed_by_hand(likelihood):
    vae = make_vae(likelihood=likelihood, beta=3.0, kl_warmup_steps=10).eval()
    batch = toy_batch(n=3)
    if likelihood == "bernoulli":
        batch["image"] = batch["image"].sign()  # binary pixels, so the Bernoulli likelihood is a plain one
    with torch.no_grad():
        total, n = vae.eval_step(batch)
    assert n == 3
    with torch.no_grad():
        mu, logvar = vae.encoder(batch["image"], None)
        std = torch.exp(0.5 * logvar)
        noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(EVAL_SEED))
        out = vae.decoder(mu + std * noise, None)
        if likelihood == "gaussian":
            sigma = vae.log_sigma.exp().view(1, 3, 1, 1)
            log_lik = Normal(out, sigma).log_prob(batch["image"])
        else:
            log_lik = Bernoulli(logits=out).log_prob((batch["image"] + 1) / 2)
        kl = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1)
        expected = (-log_lik.flatten(1).sum(1) + kl).sum()  # beta = 1 and no warm-up: the true bound
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    terms = vae.elbo_terms(batch)
    assert terms["neg_elbo"] == pytest.approx(float(expected) / 3, rel=1e-5)
    assert terms["recon"] + terms["kl"] == pytest.approx(terms["neg_elbo"], rel=1e-6)
    with torch.no_grad():
        assert float(vae.eval_step(batch)[0]) == float(total), "validation uses a fixed posterior sample"


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_training_lowers_the_negative_elbo(likelihood):
    vae = make_vae(likelihood=likelihood)
    val = toy_batch(n=32, seed=99)
    before = vae.elbo_terms(val)["neg_elbo"]
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(40):
        opt.zero_grad()
        vae.training_step(toy_batch(n=16, seed=step)).backward()
        opt.step()
    after = vae.elbo_terms(val)["neg_elbo"]
    assert after < before - 0.25 * abs(before), (before, after)


def test_kl_warmup_rises_linearly_and_counts_only_training_batches():
    vae = make_vae(beta=2.0, kl_warmup_steps=4)
    batch = toy_batch(n=4)
    weights = []
    for _ in range(6):
        weights.append(float(vae.kl_weight()))
        vae.training_step(batch)
        vae.eval_step(batch)
        vae.elbo_terms(batch)
        vae.sample(2)
        vae.reconstruct(batch["image"])
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    assert int(vae.kl_batches) == 6
    # saved with the weights (so resume is exact), and not floating point (so the EMA leaves it alone)
    state = vae.state_dict()
    assert state["kl_batches"].dtype == torch.int64
    fresh = make_vae(beta=2.0, kl_warmup_steps=4)
    fresh.load_state_dict(state)
    assert int(fresh.kl_batches) == 6


def test_training_loss_uses_the_warmup_weight():
    batch = toy_batch(n=4)

    def first_loss(**cfg) -> float:
        torch.manual_seed(5)
        return make_vae(**cfg).training_step(batch).item()

    assert first_loss(beta=1.0, kl_warmup_steps=3) == pytest.approx(first_loss(beta=0.0))
    assert first_loss(beta=1.0) > first_loss(beta=0.0)


def test_interpolation_ends_are_the_decoded_endpoints():
    vae = make_vae()
    z_a, z_b = torch.randn(4), torch.randn(4)
    path = vae.interpolate(z_a, z_b, steps=5)
    assert path.shape == (5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(path[0], vae.decode(z_a[None])[0], atol=1e-5)
        assert torch.allclose(path[-1], vae.decode(z_b[None])[0], atol=1e-5)
    assert not torch.allclose(path[2], path[0])
    with pytest.raises(ControlError):
        vae.interpolate(z_a, z_b, steps=1)


def test_conditional_reconstructions_depend_on_the_label():
    vae = make_vae(conditional=True, num_classes=2)
    x = toy_batch(n=4)["image"]
    assert not torch.allclose(vae.reconstruct(x, labels=0), vae.reconstruct(x, labels=1))
    assert vae.interpolate(torch.randn(4), torch.randn(4), 3, labels=1).shape == (3, 3, 8, 8)
    with pytest.raises(ControlError):
        vae.sample(2)


def test_sampling_is_seeded_and_temperature_zero_is_the_prior_mean():
    vae = make_vae()
    a = vae.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, vae.sample(3, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(a[0], a[1])
    flat = vae.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(flat[0], flat[1]) and torch.equal(flat[0], flat[2])
    with pytest.raises(ControlError):
        vae.sample(1, temperature=-1.0)


class ToyColours:
    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return toy_batch(batch_size, seed=int(torch.randint(0, 2**31, (1,), generator=generator)))

    def eval_batches(self, batch_size: int, limit: int = 0):
        yield toy_batch(batch_size, seed=99)


def test_the_trainer_validates_on_the_negative_elbo_and_saves_the_warmup_counter(tmp_path):
    vae = make_vae(kl_warmup_steps=100)
    cfg = TrainConfig(max_steps=3, batch_size=8, grad_accum=2, warmup_steps=0, ema_decay=0.9, eval_every=0,
                      checkpoint_every=0)
    result = Trainer(vae, cfg, RunDir(tmp_path), ToyColours(), ToyColours(), device=torch.device("cpu"),
                     quiet=True).fit()
    with torch.no_grad():
        total, n = vae.eval_step(toy_batch(8, seed=99))
    assert result.val_loss == pytest.approx(float(total) / n, rel=1e-5)
    assert int(load_tensors(tmp_path / files.MODEL)["kl_batches"]) == 6, "one count per training batch"
