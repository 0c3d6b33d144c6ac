"""The DCGAN-style GAN: architecture by size, conditioning, losses and their gradients, the two training
phases, sampling controls and determinism, and learning a toy distribution."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from helpers import HandWrittenLoop, error_message
from muselab.core import rundir as files
from muselab.core.checkpoint import load_into, load_tensors
from muselab.core.config import TrainConfig, build_config
from muselab.core.errors import ConfigError, ControlError
from muselab.core.rundir import RunDir
from muselab.core.trainer import PhaseCarry, Trainer
from muselab.image.gan import (
    GAN,
    ClassBatchNorm2d,
    DownBlock,
    GANConfig,
    UpBlock,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)

LOSSES = ("nonsaturating", "hinge", "wgan-gp")


def make_gan(seed: int = 0, **overrides) -> GAN:
    settings = dict(size=8, width=8, latent_dim=8)
    settings.update(overrides)
    torch.manual_seed(seed)
    return GAN(GANConfig(**settings))


def make_batch(n: int = 4, size: int = 8, channels: int = 3, num_classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # Values in [-0.9, 0.9]: no exact zeros, so zeros the discriminator sees come from augmentation
    return {"image": torch.rand(n, channels, size, size, generator=gen) * 1.8 - 0.9,
            "label": torch.arange(n) % max(1, num_classes)}


def count(module: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_shapes_and_block_count_follow_the_size(size):
    gan = make_gan(size=size, channels=1)
    images = gan.sample(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, size, size)
    assert images.min() >= -1 and images.max() <= 1
    blocks = int(math.log2(size)) - 2
    assert count(gan.generator, UpBlock) == blocks
    assert count(gan.discriminator, DownBlock) == blocks
    assert gan.discriminator(images).shape == (3,)


def test_256_builds_with_capped_channels():
    gan = GAN(GANConfig(size=256, width=4, latent_dim=8))
    assert count(gan.generator, UpBlock) == 6
    widest = max(m.out_channels for m in gan.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert widest == 8 * 4
    with torch.no_grad():
        assert gan.generate_from(torch.zeros(1, 8)).shape == (1, 3, 256, 256)


@pytest.mark.parametrize("setting", [{"size": 48}, {"size": 4}, {"size": 512}, {"loss": "lsgan"},
                                     {"diffaugment": "translation,zoom"}, {"channels": 2}])
def test_bad_settings_are_one_line_config_errors(setting):
    with pytest.raises(ConfigError) as err:
        build_config(GANConfig, [setting])
    msg = error_message(err)
    assert next(iter(setting)) in msg
    if "zoom" in str(setting):
        assert "'zoom'" in msg and "translation, cutout" in msg
    if setting.get("size") == 48:
        assert "power of two" in msg


def test_diffaugment_setting_is_normalised():
    assert GANConfig(diffaugment="cutout, translation").diffaugment == "translation,cutout"
    with pytest.raises(ValidationError):
        GANConfig(diffaugment="rotate")


def test_conditional_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_gan(conditional=True, num_classes=1)


@pytest.mark.parametrize("conditioning", ["projection", "concat"])
def test_conditional_networks_read_the_label(conditioning):
    gan = make_gan(conditional=True, num_classes=3, conditioning=conditioning).eval()
    z = gan.noise(4, torch.Generator().manual_seed(0))
    a, b = gan.generate_from(z, torch.zeros(4, dtype=torch.long)), gan.generate_from(z, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)
    with torch.no_grad():
        d0 = gan.discriminator(a, torch.zeros(4, dtype=torch.long))
        d1 = gan.discriminator(a, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(d0, d1)


def test_unconditional_model_ignores_batch_labels():
    batch = make_batch()
    torch.manual_seed(0)
    a = make_gan().training_step(batch, phase="discriminator")
    torch.manual_seed(0)
    b = make_gan().training_step({**batch, "label": torch.zeros(4, dtype=torch.long)}, phase="discriminator")
    assert torch.equal(a, b)


def test_loss_formulas():
    d_real, d_fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss("hinge", d_real, d_fake).item() == pytest.approx(1.0)
    assert generator_loss("hinge", d_fake).item() == pytest.approx(1.0)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert discriminator_loss("nonsaturating", d_real, d_fake).item() == pytest.approx(
        (softplus(-2) + softplus(0)) / 2 + (softplus(-2) + softplus(0)) / 2)
    assert generator_loss("nonsaturating", d_fake).item() == pytest.approx((softplus(2) + softplus(0)) / 2)
    assert discriminator_loss("wgan-gp", d_real, d_fake).item() == pytest.approx(-2.0)
    assert generator_loss("wgan-gp", d_fake).item() == pytest.approx(1.0)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_critic_and_grows_with_the_slope():
    torch.manual_seed(0)
    real, fake = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8)
    w = torch.randn(3 * 8 * 8)
    unit = w / w.norm()
    assert gradient_penalty(lambda x: x.flatten(1) @ unit, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    assert gradient_penalty(lambda x: x.flatten(1) @ (3 * unit), real, fake).item() == pytest.approx(4.0, rel=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("options", [dict(), dict(spectral_norm=False),
                                     dict(conditional=True, num_classes=3, conditioning="concat"),
                                     dict(conditional=True, num_classes=3, spectral_norm=False),
                                     dict(diffaugment="color,translation,cutout"),
                                     dict(conditional=True, num_classes=3, generator_conditioning="batchnorm",
                                          aux_classifier=0.5)],
                         ids=["sn", "bn", "concat", "projection-bn", "diffaugment", "classbn-aux"])
def test_each_phase_gives_a_finite_loss_and_gradients_only_to_its_network(loss, options):
    gan = make_gan(loss=loss, **options)
    batch = make_batch()
    d_params, g_params = list(gan.discriminator.parameters()), list(gan.generator.parameters())
    carry = PhaseCarry()
    for phase, trained, untouched in (("discriminator", d_params, g_params), ("generator", g_params, d_params)):
        gan.zero_grad(set_to_none=True)
        loss_value = gan.training_step(batch, phase=phase, carry=carry)
        assert loss_value.dim() == 0 and torch.isfinite(loss_value)
        loss_value.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        assert sum(float(p.grad.abs().sum()) for p in trained) > 0
        assert all(p.grad is None for p in untouched)
    assert all(p.requires_grad for p in gan.parameters()), "the discriminator is unfrozen after the G phase"
    metrics = {name: float(value) for name, value in carry.metrics.items()}
    expected = {"d_real", "d_fake"} | ({"gp"} if loss == "wgan-gp" else set())
    assert set(metrics) == expected and all(math.isfinite(v) for v in metrics.values())
    if loss == "wgan-gp":
        assert metrics["gp"] > 0


def test_class_batchnorm_starts_as_batchnorm_and_gives_each_class_its_own_gain_and_bias():
    torch.manual_seed(0)
    norm, plain = ClassBatchNorm2d(4, 3), torch.nn.BatchNorm2d(4)
    torch.nn.init.zeros_(norm.class_affine.weight)
    x, labels = torch.randn(6, 4, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(norm(x, labels), plain(x), atol=1e-6)
    with torch.no_grad():
        norm.class_affine.weight[1] = 0.5  # class 1: gain x1.5, bias +0.5
    out, reference = norm(x, labels), plain(x)
    assert torch.allclose(out[labels != 1], reference[labels != 1], atol=1e-6)
    assert torch.allclose(out[labels == 1], reference[labels == 1] * 1.5 + 0.5, atol=1e-5)


def test_generator_with_class_batchnorm_reads_the_label_in_every_block():
    gan = make_gan(size=16, conditional=True, num_classes=3, generator_conditioning="batchnorm")
    norms = [m for m in gan.generator.modules() if isinstance(m, ClassBatchNorm2d)]
    assert len(norms) == len(gan.generator.blocks) == 2
    with torch.no_grad():
        for norm in norms:
            norm.class_affine.weight.normal_(0, 0.5)
        gan.generator.label_embed.weight.zero_()  # the input embedding says nothing: only the norms differ
    z = gan.noise(4, torch.Generator().manual_seed(0))
    a, b = gan.generate_from(z, torch.zeros(4, dtype=torch.long)), gan.generate_from(z, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)


def test_aux_classifier_adds_the_weighted_cross_entropy_of_real_images_and_of_the_fakes():
    gan = make_gan(conditional=True, num_classes=3, aux_classifier=0.5).eval()  # eval: spectral norm holds still
    batch = make_batch(n=6)
    real, labels = batch["image"], batch["label"]
    torch.manual_seed(1)
    carry = PhaseCarry()  # the generator phase scores the discriminator phase's fakes
    d_loss = gan.training_step(batch, phase="discriminator", carry=carry)
    g_loss = gan.training_step(batch, phase="generator", carry=carry)
    torch.manual_seed(1)
    fake = gan.generator(torch.randn(6, 8), labels)
    with torch.no_grad():
        logits, classes = gan.discriminator.logits(torch.cat((real, fake)), labels.repeat(2))
    cross_entropy = torch.nn.functional.cross_entropy
    expected_d = discriminator_loss("hinge", logits[:6], logits[6:]) + 0.5 * cross_entropy(classes[:6], labels)
    expected_g = generator_loss("hinge", logits[6:]) + 0.5 * cross_entropy(classes[6:], labels)
    assert d_loss.item() == pytest.approx(expected_d.item(), rel=1e-5)
    assert g_loss.item() == pytest.approx(expected_g.item(), rel=1e-5)
    # Spectral norm holds the real/fake layers but leaves the classifier's logits free to grow
    assert torch.nn.utils.parametrize.is_parametrized(gan.discriminator.to_logit)
    assert not torch.nn.utils.parametrize.is_parametrized(gan.discriminator.classifier)


def test_class_options_are_ignored_by_an_unconditional_model():
    gan = make_gan(aux_classifier=1.0, generator_conditioning="batchnorm")
    assert gan.discriminator.classifier is None
    assert not any(isinstance(m, ClassBatchNorm2d) for m in gan.modules())


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="discriminator, generator"):
        make_gan().training_step(make_batch(), phase="critic")


def test_optimizer_phases_split_the_parameters():
    gan = make_gan(d_lr_scale=2.0, conditional=True, num_classes=3)
    phases = gan.optimizer_phases()
    assert [p.name for p in phases] == ["discriminator", "generator"]
    assert phases[0].lr_scale == 2.0 and phases[1].lr_scale == 1.0
    for name, _ in gan.named_parameters():
        assert sum(name.startswith(p.prefixes) for p in phases) == 1, name


def test_one_generator_forward_per_step_and_a_fresh_one_for_another_batch():
    gan = make_gan()
    calls = []
    gan.generator.register_forward_hook(lambda *_: calls.append(1))
    batch, carry = make_batch(), PhaseCarry()
    gan.training_step(batch, phase="discriminator", carry=carry).backward()
    gan.zero_grad(set_to_none=True)
    gan.training_step(batch, phase="generator", carry=carry).backward()
    assert len(calls) == 1
    assert all(p.grad is not None for p in gan.generator.parameters())
    gan.zero_grad(set_to_none=True)
    gan.training_step(make_batch(seed=1), phase="generator").backward()  # a new batch without a carry
    assert len(calls) == 2
    assert all(p.grad is not None for p in gan.generator.parameters())


def test_diffaugment_transforms_real_and_fake_images_in_both_phases():
    gan = make_gan(diffaugment="cutout")
    seen = []
    gan.discriminator.from_image.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    batch = make_batch()
    gan.training_step(batch, phase="discriminator")
    gan.training_step(batch, phase="generator")
    inputs = torch.cat(seen)  # real and fake of the D phase, then fake of the G phase
    assert inputs.shape[0] == 12
    zeros_per_image = (inputs == 0).flatten(1).sum(1)
    assert (zeros_per_image >= 2 * 2 * 3).all(), "every image lost (part of) a 4x4 square"


def test_same_seed_same_images_and_different_seeds_differ():
    gan = make_gan()
    a = gan.sample(4, generator=torch.Generator().manual_seed(7))
    b = gan.sample(4, generator=torch.Generator().manual_seed(7))
    c = gan.sample(4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_truncation_zero_gives_one_image_per_label_and_one_gives_the_spread():
    gan = make_gan(conditional=True, num_classes=3)
    images = [gan.sample(2, labels=1, truncation=0.0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(images[0], images[1]) and torch.equal(images[0][0], images[0][1])
    other_label = gan.sample(1, labels=2, truncation=0.0)
    assert not torch.allclose(other_label[0], images[0][0])
    spread = gan.sample(2, labels=1, truncation=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(spread[0], spread[1])
    with pytest.raises(ControlError):
        gan.noise(1, truncation=-0.5)


def test_sampling_uses_eval_mode_and_restores_the_mode():
    gan = make_gan().train()
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    gan.sample(4)
    assert gan.training
    after = gan.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "sampling updates no running statistics"
    gan.eval()
    gan.sample(2)
    assert not gan.training


def test_labels_are_checked_when_sampling():
    conditional = make_gan(conditional=True, num_classes=3)
    for bad in (None, 3, -1, torch.tensor([0, 1, 2])):
        with pytest.raises(ControlError) as err:
            conditional.sample(2, labels=bad)
        error_message(err)
    assert conditional.sample(2, labels=torch.tensor([0, 2])).shape == (2, 3, 8, 8)
    with pytest.raises(ControlError, match="without labels"):
        make_gan().sample(2, labels=0)


def test_saved_weights_sample_the_same_images_in_a_fresh_model():
    gan = make_gan(conditional=True, num_classes=3, seed=0)
    batch = make_batch()
    for phase in gan.PHASES:
        gan.training_step(batch, phase=phase).backward()
    state = {k: v.clone() for k, v in gan.state_dict().items()}
    fresh = make_gan(conditional=True, num_classes=3, seed=1)
    fresh.load_state_dict(state)
    kwargs = dict(labels=1)
    assert torch.equal(gan.sample(3, generator=torch.Generator().manual_seed(0), **kwargs),
                       fresh.sample(3, generator=torch.Generator().manual_seed(0), **kwargs))


def toy_colours(n: int, gen: torch.Generator) -> torch.Tensor:
    """8x8 RGB images, each one flat colour: red or blue."""
    palette = torch.tensor([[0.8, -0.8, -0.8], [-0.8, -0.8, 0.8]])
    return palette[torch.randint(0, 2, (n,), generator=gen)][:, :, None, None].expand(-1, -1, 8, 8).contiguous()


def colour_distance(images: torch.Tensor) -> float:
    """Mean distance of each pixel's colour to the nearer of the two data colours."""
    palette = torch.tensor([[0.8, -0.8, -0.8], [-0.8, -0.8, 0.8]])
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    return float(torch.cdist(pixels, palette).min(1).values.mean())


@pytest.mark.parametrize("loss", LOSSES)
def test_a_short_hand_written_loop_moves_samples_towards_the_data(loss):
    gan = make_gan(loss=loss, latent_dim=8, width=8)
    loop = HandWrittenLoop(gan, lr=2e-3, betas=(0.5, 0.99))
    fixed = torch.Generator().manual_seed(123)
    before = colour_distance(gan.sample(64, generator=fixed))
    data = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(100):
        loop.step({"image": toy_colours(32, data), "label": torch.zeros(32, dtype=torch.long)})
    after = colour_distance(gan.sample(64, generator=fixed.manual_seed(123)))
    assert after < 0.6 * before, (before, after)


class ToyColours:
    """The toy data as the Trainer's batch source; a GAN has no validation loss."""

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"image": toy_colours(batch_size, generator), "label": torch.zeros(batch_size, dtype=torch.long)}

    def eval_batches(self, batch_size: int, limit: int = 0):
        return iter(())


def test_the_trainer_runs_both_phases_and_its_saved_ema_weights_sample(tmp_path):
    gan = make_gan(loss="wgan-gp", d_lr_scale=2.0)
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.9, eval_every=0,
                      checkpoint_every=0, log_every=1)
    Trainer(gan, cfg, RunDir(tmp_path), ToyColours(), None, device=torch.device("cpu"), quiet=True).fit()
    last = [r for r in RunDir(tmp_path).read_metrics() if "loss_generator" in r][-1]
    assert {"loss_discriminator", "d_real", "d_fake", "gp"} <= set(last)
    fresh = make_gan(loss="wgan-gp", seed=1)
    load_into(fresh, load_tensors(tmp_path / files.MODEL), tmp_path / files.MODEL)
    images = fresh.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(images).all()
    assert torch.equal(images, fresh.sample(4, generator=torch.Generator().manual_seed(0)))


def test_a_phase_depends_on_its_batch_and_carry_not_on_the_phases_called_before() -> None:
    gan = make_gan().eval()  # eval: spectral norm's power iteration holds still between calls
    a, b = make_batch(seed=0), make_batch(seed=1)
    attributes = dict(vars(gan))
    torch.manual_seed(1)
    carry = PhaseCarry()
    d_first = gan.training_step(a, phase="discriminator", carry=carry).item()
    expected = gan.training_step(a, phase="generator", carry=carry).item()
    # Another batch's discriminator phase in between (as with gradient accumulation) changes nothing
    torch.manual_seed(1)
    carry = PhaseCarry()
    gan.training_step(a, phase="discriminator", carry=carry)
    gan.training_step(b, phase="discriminator", carry=PhaseCarry())
    assert gan.training_step(a, phase="generator", carry=carry).item() == expected
    # Either phase may go first: the first one makes the batch's images, the other reuses them
    torch.manual_seed(1)
    swapped = PhaseCarry()
    assert gan.training_step(a, phase="generator", carry=swapped).item() == expected
    assert gan.training_step(a, phase="discriminator", carry=swapped).item() == d_first
    assert torch.equal(swapped.values["fake"], carry.values["fake"])
    # The model kept nothing from the calls
    assert vars(gan).keys() == attributes.keys() and all(vars(gan)[k] is v for k, v in attributes.items())
