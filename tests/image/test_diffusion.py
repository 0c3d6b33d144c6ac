"""The image-diffusion model and recipe: schedules, training, samplers, guidance, image-to-image,
inpainting and interpolation, end to end through the generation pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from helpers import error_message
from muselab import api
from muselab.core.errors import CheckpointError, ConfigError, ControlError, DataError
from muselab.image.diffusion import (
    DEFAULT_GUIDANCE,
    Diffusion,
    DiffusionConfig,
    alphas_cumprod,
    sampling_timesteps,
)
from muselab.image.diffusion_recipe import GUIDANCE_SCALES, ImageDiffusionRecipe
from muselab.safety.embed import read_manifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "diffusion"
    api.train("image-diffusion", "builtin:digits", out, preset="tiny", overrides=["model.conditional=true"],
              quiet=True)
    return out


def _pixels(generated) -> np.ndarray:
    return np.stack(generated.items)


def _tiny(**overrides) -> Diffusion:
    torch.manual_seed(0)
    cfg = {"size": 8, "channels": 1, "width": 8, "res_blocks": 1, "timesteps": 50, **overrides}
    return Diffusion(DiffusionConfig(**cfg))


# ----------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [10, 100, 1000])
def test_schedules_remove_the_signal_step_by_step(schedule: str, timesteps: int) -> None:
    abar = alphas_cumprod(schedule, timesteps)
    assert abar.shape == (timesteps,)
    assert bool((abar[1:] < abar[:-1]).all()) and bool((abar > 0).all()) and bool((abar < 1).all())
    assert abar[0] > 0.95 and abar[-1] < 0.02  # from almost all signal to almost all noise


def test_cosine_keeps_more_signal_midway_and_less_at_the_end_than_linear() -> None:
    linear, cosine = alphas_cumprod("linear", 1000), alphas_cumprod("cosine", 1000)
    assert cosine[500] > 2 * linear[500]  # linear destroys the signal early (Nichol & Dhariwal's point)
    assert cosine[-1] < linear[-1]
    assert abs(float(linear[0]) - (1 - 1e-4)) < 1e-9


def test_sampling_timesteps_span_the_schedule() -> None:
    assert sampling_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    assert sampling_timesteps(1000, 25)[0] == 999 and sampling_timesteps(1000, 25)[-1] == 0
    assert len(set(sampling_timesteps(1000, 25).tolist())) == 25
    with pytest.raises(ControlError, match="--steps"):
        sampling_timesteps(50, 51)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "log_snr", "karras"])
@pytest.mark.parametrize("timesteps, steps", [(1000, 25), (1000, 2), (100, 60), (50, 50), (1000, 1000)])
def test_every_spacing_visits_distinct_timesteps_from_the_noisiest_to_zero(spacing: str, timesteps: int,
                                                                           steps: int) -> None:
    chosen = sampling_timesteps(timesteps, steps, spacing, alphas_cumprod("cosine", timesteps))
    assert len(chosen) == steps and chosen[0] == timesteps - 1 and chosen[-1] == 0
    assert bool((chosen[1:] < chosen[:-1]).all())


def test_denser_spacings_spend_more_steps_at_low_noise() -> None:
    abar = alphas_cumprod("cosine", 1000)
    low_noise = {spacing: int((sampling_timesteps(1000, 25, spacing, abar) < 250).sum())
                 for spacing in ("uniform", "quadratic", "log_snr", "karras")}
    assert low_noise["uniform"] == 6
    assert all(low_noise[spacing] > 6 for spacing in ("quadratic", "log_snr", "karras"))
    with pytest.raises(ControlError, match="spacing"):
        sampling_timesteps(1000, 25, "cubic", abar)
    with pytest.raises(ValueError, match="abar"):
        sampling_timesteps(1000, 25, "karras")


def test_config_refuses_levels_below_two_pixels() -> None:
    with pytest.raises(ValueError, match="channel_mult"):
        DiffusionConfig(size=8, channel_mult=[1, 1, 1, 1])
    assert DiffusionConfig(size=32).levels() == [1, 2, 2, 2]


# -------------------------------------------------------------------------------------------- training

def _black_and_white(prediction: str, steps: int = 80, **overrides) -> tuple[Diffusion, float, float]:
    """A conditional model trained on two classes, all-black and all-white images; the loss on fixed
    timesteps and noise before and after."""
    model = _tiny(prediction=prediction, num_classes=2, conditional=True, **overrides)
    images = torch.stack([torch.full((1, 8, 8), -1.0), torch.full((1, 8, 8), 1.0)]).repeat(8, 1, 1, 1)
    batch = {"image": images, "label": torch.tensor([0, 1]).repeat(8)}

    def held_out_loss() -> float:
        torch.manual_seed(123)  # the same timesteps, noise and class dropout every time
        with torch.no_grad():
            return float(np.mean([float(model.training_step(batch)) for _ in range(8)]))

    before = held_out_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        torch.manual_seed(step)
        loss = model.training_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, before, held_out_loss()


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_training_lowers_the_loss_on_a_tiny_problem(prediction: str) -> None:
    _, before, after = _black_and_white(prediction)
    assert after < 0.7 * before


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_min_snr_weighting_is_the_x0_error_times_the_capped_snr(prediction: str) -> None:
    """Whatever the network predicts, the weighted loss is the implied x0's squared error times min(SNR, 5)."""
    model = _tiny(prediction=prediction, loss_weighting="min_snr", snr_gamma=5.0)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    noise = torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 5, 15, 25, 40, 49])
    out = torch.randn(6, 1, 8, 8)
    a, s = model._coefficients(t)
    x_t = model.add_noise(x0, noise, t)
    implied_x0 = {"epsilon": (x_t - s * out) / a, "x0": out, "v": a * x_t - s * out}[prediction]
    abar = model.abar[t]
    expected = (implied_x0 - x0).pow(2).mean(dim=(1, 2, 3)) * (abar / (1 - abar)).clamp(max=5.0)
    weighted = (out - model.target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3)) * model.loss_weights(t)
    torch.testing.assert_close(weighted, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(_tiny(prediction=prediction).loss_weights(t), torch.ones(6))


def test_scale_shift_conditioning_trains_and_old_configs_keep_their_weights() -> None:
    # the adaptive GroupNorm's embedding layer makes a scale and a shift per channel
    plain, adaptive = _tiny(), _tiny(scale_shift=True)
    assert adaptive.net.mid1.emb.out_features == 2 * plain.net.mid1.emb.out_features
    assert DiffusionConfig().scale_shift is False  # a run saved before the option loads as it was trained
    assert all(preset["model"]["scale_shift"] and preset["model"]["loss_weighting"] == "min_snr"
               for preset in ImageDiffusionRecipe.presets.values())
    model, before, after = _black_and_white("x0", steps=150, scale_shift=True)
    assert after < 0.7 * before
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    black, white = (model.sample(4, label, steps=10, guidance=2.0, noise=noise) for label in (0, 1))
    assert float(white.mean()) > float(black.mean()) + 1.0


def test_labels_steer_and_guidance_changes_the_images() -> None:
    model, _, _ = _black_and_white("x0", steps=150)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    black, white = (model.sample(4, label, steps=10, guidance=2.0, noise=noise) for label in (0, 1))
    assert float(white.mean()) > float(black.mean()) + 1.0
    plain = model.sample(4, 1, steps=10, guidance=1.0, noise=noise)
    assert not torch.equal(plain, white)


# -------------------------------------------------------------------------------------------- sampling

def test_ddim_at_eta_zero_depends_on_the_starting_noise_only() -> None:
    model = _tiny()
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = model.sample(3, steps=10, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(5))
    b = model.sample(3, steps=10, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    ancestral = [model.sample(3, steps=10, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(s))
                 for s in (5, 6)]
    assert not torch.equal(*ancestral)  # DDPM adds fresh noise every step
    seeded = [model.sample(3, steps=10, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    assert a.shape == (3, 1, 8, 8) and float(a.abs().max()) <= 1.0


def test_strength_zero_returns_the_picture_and_one_ignores_it() -> None:
    model = _tiny()
    picture = torch.rand(1, 1, 8, 8) * 2 - 1
    assert torch.equal(model.sample(2, init=picture, strength=0.0), picture.expand(2, -1, -1, -1))
    other = torch.rand(1, 1, 8, 8) * 2 - 1
    outs = [model.sample(2, init=p, strength=1.0, generator=torch.Generator().manual_seed(3)) for p in (picture, other)]
    assert torch.equal(*outs)
    half = [model.sample(2, init=p, strength=0.5, generator=torch.Generator().manual_seed(3)) for p in (picture, other)]
    assert not torch.equal(*half)


def test_inpainting_keeps_the_unmasked_pixels_exactly() -> None:
    model = _tiny()
    picture = torch.rand(1, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    for eta in (0.0, 1.0):
        out = model.sample(2, init=picture, mask=mask, eta=eta, steps=10, generator=torch.Generator().manual_seed(0))
        kept = (mask == 0).expand_as(out)
        assert torch.equal(out[kept], picture.expand_as(out)[kept])
        assert not torch.equal(out[~kept], picture.expand_as(out)[~kept])
    with pytest.raises(ControlError, match="--init-image"):
        model.sample(1, mask=mask)


# ---------------------------------------------------------------------------------- recipe and pipeline

def test_train_generate_save_through_the_pipeline(run_dir: Path, tmp_path: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["model"]["num_classes"] == 10 and config["config"]["train"]["ema_decay"] > 0
    assert sorted(p.name for p in (run_dir / "progress").glob("*.png")) == ["step_000010.png", "step_000020.png"]
    run = api.load(run_dir)
    result = run.generate(12, seed=4, steps=5)
    assert result.labels[:11] == [str(i) for i in range(10)] + ["0"]
    assert np.array_equal(_pixels(result), _pixels(run.generate(12, seed=4, steps=5)))
    assert not np.array_equal(_pixels(result), _pixels(run.generate(12, seed=4, steps=5, spacing="karras")))
    files = result.save(tmp_path / "out")
    assert len([f for f in files if f.name.startswith("image_")]) == 12 and (tmp_path / "out" / "grid.png").is_file()
    manifest = read_manifest(tmp_path / "out" / "image_000.png")
    assert manifest["recipe"] == "image-diffusion" and manifest["controls"]["steps"] == 5
    assert "memorization" in manifest


def _save(pixels: np.ndarray, path: Path) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)


def test_image_to_image_and_inpainting_from_files(run_dir: Path, tmp_path: Path) -> None:
    run = api.load(run_dir)
    rng = np.random.default_rng(0)
    first = _save(rng.integers(0, 256, (8, 8), dtype=np.uint8), tmp_path / "a.png")
    second = _save(rng.integers(0, 256, (8, 8), dtype=np.uint8), tmp_path / "b.png")
    same = run.generate(2, seed=2, steps=5, init_image=first, strength=0.0, memorization="off")
    assert all(np.array_equal(item, np.asarray(Image.open(first))) for item in same.items)
    ignored = [_pixels(run.generate(2, seed=2, steps=5, init_image=p, strength=1.0, label="4")) for p in (first, second)]
    assert np.array_equal(*ignored)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    painted = run.generate(3, seed=2, steps=5, init_image=first, mask=_save(mask, tmp_path / "m.png"))
    for item in painted.items:
        assert np.array_equal(item[:, :4], np.asarray(Image.open(first))[:, :4])
    assert painted.to_json()["controls"]["mask"].endswith("m.png")


def test_interpolation_ends_are_the_seeds_images(run_dir: Path) -> None:
    run = api.load(run_dir)
    walk = run.generate(interpolate=["11", "12"], frames=5, label="2", steps=5)
    assert len(walk.items) == 5 and walk.labels == ["2"] * 5
    for end, frame in (("11", 0), ("12", -1)):
        alone = run.generate(1, seed=int(end), label="2", steps=5)
        assert np.array_equal(walk.items[frame], alone.items[0])


@pytest.mark.parametrize("controls, expected, error", [
    ({"mask": "m.png"}, "--mask needs --init-image", ControlError),
    ({"strength": 0.5}, "--strength needs --init-image", ControlError),
    ({"steps": 101}, "--steps must be at most 100", ControlError),
    ({"init_image": "missing.png"}, "does not exist", DataError),
    ({"interpolate": ["1", "2"], "init_image": "x.png"}, "leave out --init-image", ControlError),
])
def test_control_errors_are_one_line(run_dir: Path, controls: dict, expected: str, error: type) -> None:
    with pytest.raises(error) as err:
        api.load(run_dir).generate(2, seed=0, **controls)
    assert expected in error_message(err) and "\n" not in error_message(err)


def test_unreadable_init_image_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(DataError) as err:
        api.load(run_dir).generate(1, init_image=str(bad))
    assert "cannot read image" in error_message(err)


def test_cli_names_sampling_steps_and_frames(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "walk"
    result = run_cli("generate", str(run_dir), "--interpolate", "1", "2", "--frames", "4", "--steps", "3",
                     "--sampler", "ddpm", "--label", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("image_*.png"))) == 4 and (out / "animation.gif").is_file()
    for option, value in (("--sampler", "euler"), ("--spacing", "cubic")):
        bad = run_cli("generate", str(run_dir), option, value, "--out", str(tmp_path / "x"))
        assert bad.returncode == 2 and option in bad.stderr and bad.stderr.count("\n") == 1


def test_bad_model_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        api.train("image-diffusion", "builtin:digits", tmp_path / "run", preset="tiny",
                  overrides=["model.channel_mult=[1,1,1,1]"])
    assert "channel_mult" in error_message(err)


# ------------------------------------------------------------------------------- guidance per run

@pytest.mark.slow
def test_evaluate_chooses_the_guidance_on_held_out_images_and_generation_uses_it(run_dir: Path,
                                                                                   tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert api.load(copy).generate(2, seed=0, steps=3).to_json()["controls"]["guidance"] == DEFAULT_GUIDANCE
    metrics = api.evaluate(copy)
    sweep = metrics["guidance_sweep"]
    assert [float(s) for s in sweep] == list(GUIDANCE_SCALES)
    lowest = min(sweep, key=lambda scale: sweep[scale]["kid_muselab"])
    assert metrics["guidance"] == float(lowest)
    saved = json.loads((copy / "guidance.json").read_text())
    assert saved["guidance"] == float(lowest) and saved["sweep"] == sweep
    card = (copy / "MODEL_CARD.md").read_text()
    assert "- guidance_sweep:\n  - 1:\n    - kid_muselab: " in card  # nested bullets, not a dict's repr
    run = api.load(copy)
    assert run.generate(2, seed=0, steps=3).to_json()["controls"]["guidance"] == float(lowest)
    assert run.generate(2, seed=0, steps=3, guidance=0.5).to_json()["controls"]["guidance"] == 0.5
    # the scale changes the images: the default is the chosen one, not 1.5
    chosen = _pixels(run.generate(4, seed=1, steps=5))
    assert np.array_equal(chosen, _pixels(run.generate(4, seed=1, steps=5, guidance=float(lowest))))
    kept = api.evaluate(copy, overrides=["eval.guidance_images=0"])
    assert kept["guidance"] == float(lowest) and "guidance_sweep" not in kept


@pytest.mark.parametrize("content, expected", [
    ('{"guidance": "high"}', "is a string"),
    ('{"guidance": 50}', "outside 0 to 20"),
    ('[1.5]', "not a JSON object"),
])
def test_a_damaged_guidance_file_is_one_line(run_dir: Path, tmp_path: Path, content: str, expected: str) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "guidance.json").write_text(content)
    with pytest.raises(CheckpointError) as err:
        api.load(copy)
    assert expected in error_message(err) and "\n" not in error_message(err)


def test_the_second_order_sampler_follows_the_ode_closer_than_ddim() -> None:
    """Gaussian data N(0, s^2) has an exact denoiser and an exact probability-flow path (x_t over its
    standard deviation stays constant), so each sampler's error at 25 steps is known."""
    model = _tiny(timesteps=1000)
    s = 0.25

    def exact(x: torch.Tensor, t: int, labels: object, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        abar = model.abar[t]
        x0 = abar.sqrt() * s**2 * x / (abar * s**2 + 1 - abar)
        return x0, (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    model.predict = exact  # type: ignore[method-assign]
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    abar = model.abar.double()
    std_first, std_last = ((abar[t] * s**2 + 1 - abar[t]).sqrt() for t in (-1, 0))
    x_last = noise.double() * std_last / std_first
    target = (abar[0].sqrt() * s**2 * x_last / std_last**2).float()
    error = {order: (model.sample(64, steps=25, order=order, noise=noise) - target).abs().max().item()
             for order in (1, 2)}
    assert error[2] < error[1] / 2, error
    with pytest.raises(ControlError, match="leave --eta at 0"):
        model.sample(1, steps=5, order=2, eta=0.5)


def test_the_default_sampler_is_second_order_and_eta_alone_asks_for_ddim(run_dir: Path) -> None:
    run = api.load(run_dir)
    default = _pixels(run.generate(3, seed=2, steps=6, label="3"))
    assert np.array_equal(default, _pixels(run.generate(3, seed=2, steps=6, label="3", sampler="dpm++2m")))
    assert not np.array_equal(default, _pixels(run.generate(3, seed=2, steps=6, label="3", sampler="ddim")))
    noisy = [_pixels(run.generate(3, seed=2, steps=6, label="3", eta=0.5, **choice)) for choice in ({}, {"sampler": "ddim"})]
    assert np.array_equal(*noisy)  # --eta without --sampler samples with DDIM
    with pytest.raises(ControlError) as err:
        run.generate(1, seed=2, steps=6, eta=0.5, sampler="dpm++2m")
    assert "leave --eta at 0" in error_message(err)
