"""The DDSP model: control shapes and ranges, Nyquist, learning a tone, deterministic rendering."""

from __future__ import annotations

import math

import torch

from helpers import take_steps
from muselab.audio.ddsp import DDSP, DDSPConfig

SR, HOP = 16000, 64


def tiny_config(**overrides) -> DDSPConfig:
    return DDSPConfig(**{"hidden": 16, "gru": 16, "mlp_layers": 1, "n_harmonics": 12, "n_noise_bands": 9,
                         **overrides})


def curves(batch: int = 2, frames: int = 40, hz: float = 220.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((batch, frames), hz), torch.full((batch, frames), -25.0)


def test_controls_and_audio_have_the_documented_shapes():
    torch.manual_seed(0)
    model = DDSP(tiny_config())
    f0, loud = curves()
    controls = model.controls(f0, loud)
    assert controls["amplitude"].shape == (2, 40)
    assert controls["harmonics"].shape == (2, 40, 12)
    assert controls["noise"].shape == (2, 40, 9)
    assert all(bool((c >= 0).all()) for c in controls.values())
    assert model(f0, loud).shape == (2, 40 * HOP)


def test_harmonics_at_or_above_nyquist_are_silent_and_the_rest_sum_to_one():
    torch.manual_seed(0)
    model = DDSP(tiny_config())
    f0 = torch.tensor([[700.0] * 10, [3000.0] * 10])
    harmonics = model.controls(f0, torch.full((2, 10), -20.0))["harmonics"]
    for row, hz in zip(harmonics, (700.0, 3000.0), strict=True):
        audible = [k for k in range(1, 13) if k * hz < SR / 2]
        assert torch.all(row[:, len(audible):] == 0)
        assert torch.allclose(row.sum(-1), torch.ones(10), atol=1e-5)
    # At 3 kHz the third harmonic (9 kHz) would fold back to 7 kHz: nothing sounds there
    audio = model(f0[1:], torch.full((1, 10), -20.0))
    spectrum = torch.fft.rfft(audio[0] * torch.hann_window(audio.shape[-1])).abs()
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / SR)
    fundamental = spectrum[(freqs - 3000).abs() < 100].max()
    assert spectrum[(freqs - 7000).abs() < 100].max() < 1e-3 * fundamental


def test_a_few_training_steps_reduce_the_loss_on_one_tone():
    torch.manual_seed(0)
    model = DDSP(tiny_config(), loudness_mean=-25.0, loudness_std=5.0)
    frames = 40
    t = torch.arange(frames * HOP) / SR
    tone = sum(0.3 / k * torch.sin(2 * math.pi * 220.0 * k * t) for k in range(1, 6))
    batch = {"audio": tone.repeat(2, 1), "f0_hz": torch.full((2, frames), 220.0),
             "loudness_db": torch.full((2, frames), -20.0)}
    before = float(model.eval_step(batch)[0].detach()) / 2
    take_steps(model, batch, torch.optim.Adam(model.parameters(), lr=1e-2), 15)
    after = float(model.eval_step(batch)[0].detach()) / 2
    assert after < 0.8 * before


def test_render_is_deterministic_for_a_seed_and_the_noise_changes_with_it():
    torch.manual_seed(0)
    model = DDSP(tiny_config()).eval()
    f0, loud = curves(batch=1, frames=30)
    first, again = model.render(f0[0], loud[0], seed=7), model.render(f0[0], loud[0], seed=7)
    assert first.shape == (30 * HOP,)
    assert torch.equal(first, again)
    assert not torch.equal(first, model.render(f0[0], loud[0], seed=8))


def test_long_curves_are_rendered_in_chunks_close_to_the_whole_sequence():
    torch.manual_seed(0)
    model = DDSP(tiny_config()).eval()
    frames = 700
    f0 = 220.0 * 2 ** (torch.sin(torch.arange(frames) / 40.0) / 12)
    loud = -30.0 + 10 * torch.cos(torch.arange(frames) / 25.0)
    chunked = model._decode_chunked(f0[None], loud[None], None, chunk=200)
    whole = model.decode(f0[None], loud[None])
    assert chunked.shape == whole.shape
    # After a warm-up the GRU has forgotten its start: the pieces agree with one long pass (the very
    # first frames differ: there the pieces warm up on the held first value, the long pass starts cold)
    assert torch.allclose(chunked[:, 50:], whole[:, 50:], atol=1e-2)
    assert model.render(f0, loud, chunk_frames=200).shape == (frames * HOP,)


def test_loudness_normalisation_is_saved_with_the_weights():
    model = DDSP(tiny_config(), loudness_mean=-31.5, loudness_std=7.0)
    state = model.state_dict()
    assert float(state["loudness_mean"]) == -31.5 and float(state["loudness_std"]) == 7.0
    fresh = DDSP(tiny_config())
    fresh.load_state_dict(state)
    assert float(fresh.loudness_mean) == -31.5


def test_the_timbre_code_switch_adds_an_encoder_that_needs_mfccs():
    torch.manual_seed(0)
    model = DDSP(tiny_config(use_z=True, n_mfcc=8, z_dims=4))
    f0, loud = curves()
    audio = model(f0, loud, torch.randn(2, 40, 8))
    assert audio.shape == (2, 40 * HOP)
    batch = {"audio": torch.zeros(2, 40 * HOP) + 1e-3, "f0_hz": f0, "loudness_db": loud, "mfcc": torch.randn(2, 40, 8)}
    model.training_step(batch).backward()
    assert model.encoder.out.weight.grad is not None


def test_the_oscillator_bank_in_pieces_is_the_bank_in_one_call():
    from muselab.audio.synth import harmonic_synth

    torch.manual_seed(0)
    model = DDSP(tiny_config()).eval()
    frames = 300
    f0 = (180.0 * 2 ** (torch.sin(torch.arange(frames) / 30.0) / 6))[None]
    controls = model.controls(f0, torch.full((1, frames), -20.0))
    whole = harmonic_synth(f0, controls["amplitude"], controls["harmonics"], SR, frames * HOP)
    pieces = model._harmonics_in_pieces(f0, controls, piece=70)
    assert torch.allclose(pieces, whole, atol=1e-5)


def test_the_noise_in_pieces_is_the_noise_in_one_call():
    from muselab.audio.synth import filtered_noise

    model = DDSP(tiny_config(n_noise_bands=33)).eval()
    magnitudes = torch.rand(2, 300, 33, generator=torch.Generator().manual_seed(1))
    whole = filtered_noise(magnitudes, 300 * HOP, HOP, generator=torch.Generator().manual_seed(5))
    pieces = model._noise_in_pieces(magnitudes, torch.Generator().manual_seed(5), piece=70)
    assert torch.allclose(pieces, whole, atol=1e-6)
