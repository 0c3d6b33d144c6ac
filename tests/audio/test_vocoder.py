"""The vocoder model: output lengths, discriminator shapes, its training phases and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from helpers import take_steps
from muselab.audio.dsp import mrstft_distance
from muselab.audio.vocoder import MEL, Discriminators, Generator, Vocoder, VocoderConfig, mel_spectrogram
from muselab.core.trainer import SINGLE_PHASE, PhaseCarry, _phase_parameters

TINY = {"dim": 32, "intermediate": 64, "layers": 2, "disc_channels": 4}


def _tone_batch(batch: int = 2, length: int = 4096) -> dict[str, torch.Tensor]:
    """Harmonic tones at different pitches: something with structure to reconstruct."""
    t = torch.arange(length) / MEL.sr
    f0 = torch.tensor([220.0, 330.0, 440.0, 150.0])[:batch, None]
    audio = sum(0.3 / k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, 5))
    return {"audio": audio.float()}


@pytest.mark.parametrize("frames", [1, 7, 32])
def test_generator_makes_frames_times_hop_samples(frames: int) -> None:
    generator = Generator(VocoderConfig(**TINY))
    wav = generator(torch.randn(3, MEL.n_mels, frames))
    assert wav.shape == (3, frames * MEL.hop)
    assert torch.isfinite(wav).all()


def test_with_the_mel_prior_even_an_untrained_generator_keeps_silence_silent() -> None:
    torch.manual_seed(0)
    generator = Generator(VocoderConfig(**TINY))
    silent = torch.full((1, MEL.n_mels, 20), math.log(MEL.log_floor))
    loud = silent.clone()
    loud[:, 10:20] = 0.0  # a band of energy around 300-500 Hz
    with torch.no_grad():
        quiet, sound = generator(silent), generator(loud)
    assert float(quiet.abs().max()) < 1e-4
    assert float(sound.square().mean().sqrt()) > 100 * float(quiet.square().mean().sqrt())


def test_vocode_keeps_the_mode_and_training_still_works_afterwards() -> None:
    model = Vocoder(VocoderConfig(**TINY)).train()
    wav = model.vocode(torch.randn(MEL.n_mels, 10))
    assert wav.shape == (10 * MEL.hop,) and model.training
    # Inference-mode tensors made by vocode must not leak into the next training step
    model.training_step(_tone_batch()).backward()
    assert all(p.grad is not None for p in model.generator.parameters())


def test_input_mel_has_one_frame_per_hop_of_the_segment() -> None:
    model = Vocoder(VocoderConfig(**TINY))
    audio = _tone_batch(2, 4096)["audio"]
    mel = model.input_mel(audio)
    assert mel.shape == (2, MEL.n_mels, 4096 // MEL.hop)
    assert model.generator(mel).shape == audio.shape


def test_discriminator_outputs_and_feature_maps() -> None:
    cfg = VocoderConfig(**TINY, adversarial=True, periods=[2, 3])
    discriminators = Discriminators(cfg)
    real, fake = torch.randn(2, 4096) * 0.1, torch.randn(2, 4096) * 0.1
    (logits_r, maps_r), (logits_f, maps_f) = discriminators(real), discriminators(fake)
    assert len(logits_r) == len(maps_r) == 2 + 3  # two periods, three resolutions
    for logit_r, logit_f, feats_r, feats_f in zip(logits_r, logits_f, maps_r, maps_f, strict=True):
        assert logit_r.dim() == 2 and logit_r.shape[0] == 2 and logit_r.shape == logit_f.shape
        assert len(feats_r) == 6
        assert [f.shape for f in feats_r] == [f.shape for f in feats_f]
    # The period discriminators fold the batch into batch x period sequences, 4 then 8 channels, ...
    assert [f.shape[:2] for f in maps_r[0][:4]] == [(4, 4), (4, 8), (4, 16), (4, 32)]
    assert [f.shape[:2] for f in maps_r[1][:2]] == [(6, 4), (6, 8)]
    only_mpd = Discriminators(VocoderConfig(**TINY, adversarial=True, discriminators="mpd", periods=[2]))
    assert len(only_mpd(real)[0]) == 1


def test_phases_split_the_parameters() -> None:
    plain = Vocoder(VocoderConfig(**TINY))
    assert [p.name for p in plain.optimizer_phases()] == [SINGLE_PHASE]
    assert plain.discriminators is None
    gan = Vocoder(VocoderConfig(**TINY, adversarial=True))
    params = {n: p for n, p in gan.named_parameters()}
    owners = _phase_parameters(params, gan.optimizer_phases())
    assert set(owners) == {"discriminator", "generator"}
    assert all(n.startswith("generator.") for n in owners["generator"])
    assert len(owners["generator"]) + len(owners["discriminator"]) == len(params)


def test_gan_phases_give_finite_losses_and_the_generator_phase_leaves_the_discriminators_alone() -> None:
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(**TINY, adversarial=True))
    batch = _tone_batch()
    carry = PhaseCarry()
    d_loss = model.training_step(batch, phase="discriminator", carry=carry)
    d_loss.backward()
    assert torch.isfinite(d_loss) and set(carry.metrics) == {"d_real", "d_fake"}
    model.zero_grad(set_to_none=True)
    g_loss = model.training_step(batch, phase="generator", carry=carry)
    g_loss.backward()
    assert torch.isfinite(g_loss) and "mel_l1" in carry.metrics
    assert all(p.grad is None for p in model.discriminators.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    with pytest.raises(ValueError, match="unknown phase"):
        model.training_step(batch, phase="critic")


def test_a_few_reconstruction_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(**TINY))
    batch = _tone_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before, _ = model.eval_step(batch)
    losses = take_steps(model, batch, optimizer, 25)
    after, count = model.eval_step(batch)
    assert count == 2
    assert losses[-1] < 0.7 * losses[0]
    assert float(after) < 0.7 * float(before)


def test_config_refuses_even_kernels_and_short_periods() -> None:
    with pytest.raises(ValidationError, match="odd"):
        VocoderConfig(kernel_size=4)
    with pytest.raises(ValidationError, match="2 or more"):
        VocoderConfig(periods=[1, 2])


def test_an_adversarial_phase_depends_on_its_batch_and_carry_not_on_the_phases_called_before() -> None:
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(**TINY, adversarial=True))
    a, b = _tone_batch(), _tone_batch(batch=3)
    attributes = dict(vars(model))
    carry = PhaseCarry()
    d_first = model.training_step(a, phase="discriminator", carry=carry).item()
    expected = model.training_step(a, phase="generator", carry=carry).item()
    carry = PhaseCarry()
    model.training_step(a, phase="discriminator", carry=carry)
    model.training_step(b, phase="discriminator", carry=PhaseCarry())  # another batch in between
    assert model.training_step(a, phase="generator", carry=carry).item() == expected
    swapped = PhaseCarry()  # the generator phase first
    assert model.training_step(a, phase="generator", carry=swapped).item() == expected
    assert model.training_step(a, phase="discriminator", carry=swapped).item() == d_first
    assert vars(model).keys() == attributes.keys() and all(vars(model)[k] is v for k, v in attributes.items())


def test_griffin_lim_projection_is_the_stft_of_the_istft_away_from_the_ends_in_both_arithmetics() -> None:
    from muselab.audio.dsp import istft_bases, overlap_add, stft_bases
    from muselab.audio.vocoder import GriffinLimPhase

    torch.manual_seed(0)
    window = torch.hann_window(1024)
    spectrum = torch.randn(2, 513, 20, dtype=torch.complex64)  # not consistent: random
    expected = torch.stft(torch.istft(spectrum, 1024, 256, window=window, center=True), 1024, 256, window=window,
                          center=True, return_complex=True).transpose(1, 2)
    envelope = overlap_add(window.square().expand(1, 20, 1024), 256)
    scale = torch.nn.functional.pad(1 / envelope[:, 512:512 + 20 * 256], (512, 256))
    re, im = spectrum.real.transpose(1, 2), spectrum.imag.transpose(1, 2)  # frame-major
    eager = GriffinLimPhase(256).project(re, im, window, scale)
    real = GriffinLimPhase(256, (*istft_bases(window), *stft_bases(window))).project(re, im, window, scale)
    inner = slice(2, -2)  # torch reflects the signal at both ends, the projection pads it with zeros
    for got_re, got_im in (eager, real):
        assert got_re.shape == re.shape
        assert torch.allclose(got_re[:, inner], expected.real[:, inner], atol=1e-3)
        assert torch.allclose(got_im[:, inner], expected.imag[:, inner], atol=1e-3)
    again = GriffinLimPhase(256).project(*eager, window, scale)  # a consistent spectrum is its own projection
    assert torch.allclose(again[0], eager[0], atol=1e-3) and torch.allclose(again[1], eager[1], atol=1e-3)


def test_phase_iterations_make_the_spectrum_consistent_train_and_export_alike() -> None:
    from muselab.audio.vocoder import RealGenerator

    torch.manual_seed(0)
    mel = mel_spectrogram(torch.randn(1, 16 * MEL.hop) * 0.1)[..., :16]
    plain = Generator(VocoderConfig(dim=16, intermediate=32, layers=1))
    refined = Generator(VocoderConfig(dim=16, intermediate=32, layers=1, phase_iterations=8))
    refined.load_state_dict(plain.state_dict())

    def inconsistency(wav: torch.Tensor) -> float:  # how far the sound's magnitude is from the predicted one
        mag, _ = plain.polar(mel)
        again = torch.stft(wav, MEL.n_fft, MEL.hop, window=plain.window, center=True, return_complex=True)
        return float((again.abs()[..., :16] - mag).norm() / mag.norm())

    with torch.no_grad():
        assert inconsistency(refined(mel)) < 0.8 * inconsistency(plain(mel))
        assert torch.allclose(RealGenerator(refined)(mel), refined(mel), atol=1e-4)
    mel.requires_grad_(True)
    refined(mel).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in refined.parameters() if p.grad is not None)


GRIFFIN_LIM = {**TINY, "phase": "griffin_lim", "phase_iterations": 8}


def test_griffin_lim_phase_learns_the_true_magnitude_without_making_a_waveform() -> None:
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(**GRIFFIN_LIM))
    assert model.generator.head.out_features == MEL.n_fft // 2 + 1  # magnitude only
    batch = _tone_batch()
    target = torch.stft(batch["audio"], MEL.n_fft, MEL.hop, window=model.generator.window, center=True,
                        return_complex=True).abs()[..., : batch["audio"].shape[-1] // MEL.hop]

    def magnitude_error() -> float:
        with torch.no_grad():
            predicted, phase = model.generator.polar(model.input_mel(batch["audio"]))
        assert not phase.any()  # Griffin-Lim makes the phase
        return float((predicted - target).norm() / target.norm())

    start = magnitude_error()
    take_steps(model, batch, torch.optim.AdamW(model.parameters(), lr=3e-3), 25)
    # From the pseudo-inverse's magnitude (where training starts) towards the real audio's
    assert magnitude_error() < 0.7 * start
    assert model.vocode(torch.randn(MEL.n_mels, 10) - 4.0).shape == (10 * MEL.hop,)


def test_the_prior_floor_fills_the_pseudo_inverse_holes_inside_sounding_bands_and_keeps_silence() -> None:
    from muselab.audio.dsp import mel_filterbank

    torch.manual_seed(0)
    mel = Vocoder(VocoderConfig(**GRIFFIN_LIM)).input_mel(_tone_batch()["audio"])
    basis = mel_filterbank(MEL.sr, MEL.n_fft, MEL.n_mels, MEL.fmin, MEL.fmax)
    band_mean = (mel.exp() - MEL.log_floor).clamp_min(0) / basis.sum(dim=1)[:, None]  # [B, bands, F]
    # every bin of every band that sounds, against that band's mean magnitude
    inside = (basis[None, :, :, None] > 0) & (band_mean[:, :, None] > 1e-3)
    silent = torch.full((1, MEL.n_mels, 12), math.log(MEL.log_floor))
    lowest = {}
    for floor in (0.0, 0.1):
        generator = Generator(VocoderConfig(**GRIFFIN_LIM, prior_floor=floor))
        with torch.no_grad():
            magnitude, _ = generator.polar(mel, start_phase=False)
            assert float(generator(silent).abs().max()) == 0.0
        relative = magnitude[:, None] / band_mean[:, :, None].clamp_min(1e-12)
        lowest[floor] = float(relative[inside.expand_as(relative)].min())
    # Between the tones' harmonics the pseudo-inverse undershoots to zero (clamped at 1e-7, out of the
    # losses' reach); the floor keeps every such bin within a few hundredths of its bands' level
    assert lowest[0.0] < 1e-6
    assert lowest[0.1] > 1e-3


def test_griffin_lim_phase_keeps_silence_silent_and_exports_alike() -> None:
    from muselab.audio.vocoder import RealGenerator

    torch.manual_seed(0)
    generator = Generator(VocoderConfig(**GRIFFIN_LIM))
    silent = torch.full((1, MEL.n_mels, 12), math.log(MEL.log_floor))
    mel = mel_spectrogram(torch.randn(1, 12 * MEL.hop) * 0.1)[..., :12]
    with torch.no_grad():
        assert float(generator(silent).abs().max()) == 0.0
        expected, exported = generator(mel), RealGenerator(generator)(mel)
        # The two arithmetics round differently, and each momentum step of Griffin-Lim grows the difference
        # where a bin's phase is barely defined: after 8 iterations the two sound the same (an MRSTFT distance
        # a hundredth of a vocoder's), after 2 they are equal to rounding
        assert mrstft_distance(exported[0], expected[0]) < 0.05
        generator.phase_iterations = 2
        expected = generator(mel)
        assert torch.allclose(RealGenerator(generator)(mel), expected, atol=1e-3 * float(expected.abs().max()))


def test_iterations_from_the_magnitude_gradient_phase_end_more_consistent_and_export_alike() -> None:
    from muselab.audio.dsp import phase_from_magnitude
    from muselab.audio.vocoder import RealGenerator

    torch.manual_seed(0)
    mel = mel_spectrogram(_tone_batch()["audio"][:1])[..., :16]
    zero = Generator(VocoderConfig(**{**GRIFFIN_LIM, "phase_iterations": 2}))
    gradient = Generator(VocoderConfig(**{**GRIFFIN_LIM, "phase_iterations": 2, "phase_start": "gradient"}))
    gradient.load_state_dict(zero.state_dict())
    with torch.no_grad():
        mag, phase = gradient.polar(mel)
        assert torch.equal(phase, phase_from_magnitude(mag, MEL.n_fft, MEL.hop))
        assert not gradient.polar(mel, start_phase=False)[1].any()  # the magnitude regression makes none

        def inconsistency(generator: Generator) -> float:
            again = torch.stft(generator(mel), MEL.n_fft, MEL.hop, window=generator.window, center=True,
                               return_complex=True).abs()[..., :16]
            return float((again - mag).norm() / mag.norm())

        assert inconsistency(gradient) < 0.8 * inconsistency(zero)
        expected = gradient(mel)
        assert torch.allclose(RealGenerator(gradient)(mel), expected, atol=1e-3 * float(expected.abs().max()))
        assert gradient(mel[..., :1]).shape == (1, MEL.hop)  # a single frame too
    model = Vocoder(VocoderConfig(**{**GRIFFIN_LIM, "phase_iterations": 2, "phase_start": "gradient",
                                     "magnitude_target": "waveform"}))
    model.training_step(_tone_batch()).backward()  # the loss reaches the magnitude through the iterations
    assert torch.isfinite(model.generator.head.weight.grad).all()
    assert model.generator.head.weight.grad.abs().sum() > 0


def test_griffin_lim_phase_can_learn_the_magnitude_through_the_iterations() -> None:
    batch = _tone_batch()
    losses = {}
    for target in ("spectrum", "waveform"):
        torch.manual_seed(0)
        model = Vocoder(VocoderConfig(**{**GRIFFIN_LIM, "phase_iterations": 2, "magnitude_target": target}))
        loss = model.training_step(batch)
        loss.backward()
        head = model.generator.head.weight.grad
        assert torch.isfinite(head).all() and head.abs().sum() > 0
        losses[target] = float(loss.detach())
    # The same weights, scored on the waveform the iterations make rather than on the magnitude alone
    assert losses["waveform"] != pytest.approx(losses["spectrum"], rel=0.05)


def test_the_waveform_loss_takes_over_for_the_last_share_of_training() -> None:
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(**{**GRIFFIN_LIM, "phase_iterations": 2, "magnitude_target": "waveform",
                                     "waveform_share": 0.4}))
    batch = _tone_batch()
    with torch.no_grad():
        spectrum, _ = model.magnitude_loss(batch["audio"])
        model.set_training_progress(0.5)
        assert float(model.training_step(batch)) == pytest.approx(float(spectrum))
        model.set_training_progress(0.7)
        assert float(model.training_step(batch)) != pytest.approx(float(spectrum), rel=0.05)


def test_griffin_lim_phase_needs_iterations_and_no_discriminators() -> None:
    with pytest.raises(ValidationError, match="phase_iterations"):
        VocoderConfig(phase="griffin_lim")
    with pytest.raises(ValidationError, match="adversarial"):
        VocoderConfig(phase="griffin_lim", phase_iterations=4, adversarial=True)
