"""The flow-matching action decoder: flow pieces, config, network wiring, multimodal sampling."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from vam_policy.model.decoder import (
    DECODER_PRESETS,
    ActionDecoder,
    DecoderConfig,
    decoder_preset,
)
from vam_policy.model.flow import (
    TimeSamplingConfig,
    integrate,
    interpolate,
    sample_time,
    velocity_target,
)

B, N, CF, J, H = 3, 5, 8, 2, 6  # batch, video tokens, feature width, action dim, horizon


def tiny(**overrides) -> DecoderConfig:
    return decoder_preset("tiny", **{"action_dim": J, "horizon": H, "feature_dim": CF, **overrides})


def inputs(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "features": torch.randn(B, N, CF, generator=g),
        "proprio": torch.randn(B, J, generator=g),
        "actions": torch.randn(B, H, J, generator=g),
        "tau_v": torch.rand(B, generator=g),
    }


def randomize_zero_init(model: ActionDecoder, seed: int = 0) -> ActionDecoder:
    """Stand-in for trained weights: redraw every all-zero tensor (modulation, output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


# --- flow.py ---------------------------------------------------------------------------------

def test_interpolate_hits_both_ends_and_uses_one_time_per_example() -> None:
    """x_tau is data at tau = 0, noise at tau = 1, and each example reads its own tau."""
    x0, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    out = interpolate(x0, eps, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(out[0], x0[0])
    torch.testing.assert_close(out[1], eps[1])
    torch.testing.assert_close(out[2], 0.75 * x0[2] + 0.25 * eps[2])
    with pytest.raises(ValueError, match=r"tau must have shape \[B\]"):
        interpolate(x0, eps, torch.rand(2))


def test_velocity_target_is_the_derivative_of_the_path() -> None:
    """The regression target equals d x_tau / d tau, so Euler steps follow the path."""
    x0, eps, tau = torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.rand(3)
    _, tangent = torch.autograd.functional.jvp(
        lambda t: interpolate(x0, eps, t), (tau,), (torch.ones(3),))
    torch.testing.assert_close(tangent, velocity_target(x0, eps))


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_with_the_exact_constant_field_recovers_the_data(steps: int) -> None:
    """On a straight path the velocity is constant, so any step count lands on x0."""
    x0, eps = torch.randn(4, 6, 2), torch.randn(4, 6, 2)
    out = integrate(lambda x, tau: velocity_target(x0, eps), eps, steps)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_euler_walks_from_noise_to_data_in_equal_steps() -> None:
    """The field is queried at tau = 1, 0.8, ... 0.2 with one tau per example."""
    seen: list[Tensor] = []

    def record(x: Tensor, tau: Tensor) -> Tensor:
        seen.append(tau)
        return torch.zeros_like(x)

    integrate(record, torch.zeros(2, 3), 5)
    assert [t.shape for t in seen] == [(2,)] * 5
    torch.testing.assert_close(torch.stack(seen)[:, 0], torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        integrate(record, torch.zeros(2, 3), 0)


def test_uniform_time_sampler_covers_the_interval() -> None:
    tau = sample_time(TimeSamplingConfig(min_tau=0.1), 100_000,
                      generator=torch.Generator().manual_seed(0))
    assert tau.shape == (100_000,) and tau.min() >= 0.1 and tau.max() <= 1.0
    assert abs(tau.mean().item() - 0.55) < 0.005


@pytest.mark.parametrize("alpha, beta", [(1.5, 1.0), (0.5, 0.5), (2.0, 5.0)])
def test_beta_time_sampler_matches_beta_moments(alpha: float, beta: float) -> None:
    """Our generator-driven Beta sampler (both gamma branches) has the right mean and variance."""
    config = TimeSamplingConfig(kind="beta", alpha=alpha, beta=beta, min_tau=0.0)
    tau = sample_time(config, 200_000, generator=torch.Generator().manual_seed(1))
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert abs(tau.mean().item() - mean) < 0.005
    assert abs(tau.var().item() - var) < 0.003
    assert tau.min() >= 0.0 and tau.max() <= 1.0


def test_pi0_beta_emphasises_high_noise_and_replays() -> None:
    """Beta(1.5, 1) gives P(tau > 0.5) = 1 - 0.5^1.5 ~ 0.646; a seeded generator replays."""
    config = TimeSamplingConfig(kind="beta")
    tau = sample_time(config, 100_000, generator=torch.Generator().manual_seed(2))
    assert abs((tau > 0.5).float().mean().item() - 0.646) < 0.01
    again = sample_time(config, 100_000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tau, again)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "unifrom"}, "kind must be one of"),
    ({"kind": "beta", "alpha": 0.0}, "must be > 0"),
    ({"min_tau": 1.0}, r"min_tau must be in \[0, 1\)"),
])
def test_time_sampling_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TimeSamplingConfig(**kwargs)


# --- config ----------------------------------------------------------------------------------

def test_presets_by_name_with_a_hint_on_typos() -> None:
    assert set(DECODER_PRESETS) == {"paper", "tiny"}
    assert decoder_preset("tiny", horizon=12).horizon == 12
    with pytest.raises(ValueError, match="did you mean 'paper'"):
        decoder_preset("papr")


def test_config_round_trips_through_json() -> None:
    """Checkpoints store `to_dict` as JSON; loading must rebuild an equal config."""
    config = tiny(time_sampling=TimeSamplingConfig(kind="beta", alpha=2.0), dropout=0.1)
    assert DecoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown DecoderConfig keys"):
        DecoderConfig.from_dict({**config.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="unknown TimeSamplingConfig keys"):
        DecoderConfig.from_dict({**config.to_dict(), "time_sampling": {"knd": "beta"}})


@pytest.mark.parametrize("overrides, match", [
    ({"width": 66}, "divisible by heads"),
    ({"horizon": 0}, "horizon must be an int >= 1"),
    ({"adaln_lora_dim": -1}, "adaln_lora_dim"),
    ({"dropout": 1.0}, "dropout"),
    ({"time_sampling": {"kind": "beta"}}, "must be a TimeSamplingConfig"),
])
def test_config_rejects_bad_values(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_paper_preset_builds_on_meta_with_the_expected_size() -> None:
    """24 blocks x ~16 W^2 at W = 1024 plus AdaLN-LoRA: about 450 M parameters."""
    with torch.device("meta"):
        model = ActionDecoder(decoder_preset("paper"))
    count = sum(p.numel() for p in model.parameters())
    print(f"paper decoder parameters: {count / 1e6:.1f} M")
    assert 420e6 < count < 480e6


# --- network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lora", [0, 16])
def test_output_shapes_with_and_without_adaln_lora(lora: int) -> None:
    torch.manual_seed(0)
    model = ActionDecoder(tiny(adaln_lora_dim=lora))
    x = inputs()
    loss = model.loss(**x)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert model.output.proj.weight.grad.abs().sum() > 0
    chunk = model.sample(x["features"], x["proprio"], x["tau_v"], steps=2)
    assert chunk.shape == (B, H, J)
    v = model.velocity(x["actions"], torch.rand(B), x["features"], x["proprio"], x["tau_v"])
    assert v.shape == (B, H, J)


def test_velocity_is_zero_at_init() -> None:
    """adaLN-Zero: gates and the output layer start at zero, so training starts from v = 0."""
    torch.manual_seed(0)
    model = ActionDecoder(tiny())
    x = inputs()
    v = model.velocity(x["actions"], torch.rand(B), x["features"], x["proprio"], x["tau_v"])
    assert torch.equal(v, torch.zeros_like(v))


@pytest.mark.parametrize("name", ["tau_v", "tau_a", "features", "proprio", "x_tau"])
def test_every_input_steers_its_own_example_only(name: str) -> None:
    """No dead conditioning path (tau_v included) and no leak across the batch.

    Changing one input of example 0 must change example 0's velocity and leave the others.
    """
    torch.manual_seed(0)
    model = randomize_zero_init(ActionDecoder(tiny())).eval()
    x = inputs()
    args = {"x_tau": x["actions"], "tau_a": torch.full((B,), 0.5), "features": x["features"],
            "proprio": x["proprio"], "tau_v": torch.full((B,), 0.2)}
    changed = dict(args)
    changed[name] = args[name].clone()
    changed[name][0] = 0.9 if name.startswith("tau") else -2.0 * args[name][0] + 1.0
    before, after = model.velocity(**args), model.velocity(**changed)
    assert (before[0] - after[0]).abs().max() > 1e-3
    torch.testing.assert_close(before[1:], after[1:], rtol=1e-5, atol=1e-6)


def test_video_positions_let_the_decoder_tell_where_a_token_is() -> None:
    """Without a grid, cross-attention is blind to token order; with one, moving a feature to
    another place on the grid changes the prediction."""
    torch.manual_seed(0)
    x = inputs()
    grid = (1, 2, 3)
    features = torch.randn(B, 6, CF, generator=torch.Generator().manual_seed(1))
    swapped = features[:, [3, 1, 2, 0, 4, 5]]  # two tokens trade places on the grid
    args = {"x_tau": x["actions"], "tau_a": torch.full((B,), 0.5), "proprio": x["proprio"],
            "tau_v": torch.full((B,), 0.2)}
    for video_grid, sees_places in ((None, False), (grid, True)):
        model = randomize_zero_init(ActionDecoder(tiny(video_grid=video_grid))).eval()
        before = model.velocity(features=features, **args)
        after = model.velocity(features=swapped, **args)
        moved = (before - after).abs().max().item()
        assert (moved > 1e-3) == sees_places, (video_grid, moved)


def test_instruction_conditioning_steers_each_example_and_ignores_padding() -> None:
    """With text_dim, a different instruction changes that example's velocity only; padding
    tokens (all zero) do not count; without text_dim, the text is not read at all."""
    torch.manual_seed(0)
    x = inputs()
    g = torch.Generator().manual_seed(2)
    text = torch.randn(B, 4, 5, generator=g)
    text[:, 3] = 0.0  # one padding token
    args = {"x_tau": x["actions"], "tau_a": torch.full((B,), 0.5), "features": x["features"],
            "proprio": x["proprio"], "tau_v": torch.full((B,), 0.2)}
    model = randomize_zero_init(ActionDecoder(tiny(text_dim=5))).eval()
    before = model.velocity(**args, text=text)
    other = text.clone()
    other[0, :3] = torch.randn(3, 5, generator=g)
    after = model.velocity(**args, text=other)
    assert (before[0] - after[0]).abs().max() > 1e-3
    torch.testing.assert_close(before[1:], after[1:], rtol=1e-5, atol=1e-6)
    unpadded = model.velocity(**args, text=text[:, :3])
    torch.testing.assert_close(before, unpadded, rtol=1e-5, atol=1e-6)
    blind = randomize_zero_init(ActionDecoder(tiny())).eval()
    torch.testing.assert_close(blind.velocity(**args, text=text), blind.velocity(**args))


def test_instruction_conditioned_decoder_demands_its_text() -> None:
    model = ActionDecoder(tiny(text_dim=5))
    x = inputs()
    with pytest.raises(ValueError, match=r"conditioned on the instruction.*D=5"):
        model.loss(x["features"], x["proprio"], x["actions"], x["tau_v"])
    with pytest.raises(ValueError, match=r"text must have shape \[B=3, L, D=5\]"):
        model.sample(x["features"], x["proprio"], x["tau_v"], steps=1,
                     text=torch.zeros(B, 2, 4))
    with pytest.raises(ValueError, match="text_dim must be an int >= 0"):
        tiny(text_dim=-1)


def test_video_grid_fixes_the_token_count_and_survives_json() -> None:
    config = tiny(video_grid=[2, 2, 1])
    assert config.video_grid == (2, 2, 1) and config.video_tokens == 4
    assert DecoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = ActionDecoder(config)
    x = inputs()
    with pytest.raises(ValueError, match=r"features must have shape \[B, N=4"):
        model.sample(x["features"], x["proprio"], x["tau_v"], steps=1)
    with pytest.raises(ValueError, match="video_grid must be three ints"):
        tiny(video_grid=(2, 0, 1))


def test_sample_is_euler_on_the_velocity_with_video_keys_computed_once() -> None:
    """`sample` computes the video tokens' keys and values once per chunk; the chunk is still
    bit for bit Euler integration of `velocity`, which recomputes them at every call."""
    torch.manual_seed(0)
    model = randomize_zero_init(ActionDecoder(tiny(video_grid=(1, 1, N)))).eval()
    x = inputs()
    noise = torch.randn(B, H, J)
    calls = []
    hook = model.blocks[0].cross_attn.to_k.register_forward_hook(lambda *_: calls.append(1))
    chunk = model.sample(x["features"], x["proprio"], x["tau_v"], steps=4, noise=noise)
    hook.remove()
    assert len(calls) == 1
    euler = integrate(lambda z, tau: model.velocity(z, tau, x["features"], x["proprio"],
                                                    x["tau_v"]), noise, 4)
    assert torch.equal(chunk, euler)


def test_sample_is_bit_identical_after_save_and_load() -> None:
    """Same noise + same weights = same chunk, also for a model rebuilt from a checkpoint."""
    torch.manual_seed(0)
    model = randomize_zero_init(ActionDecoder(tiny())).eval()
    x = inputs()
    cond = (x["features"], x["proprio"], x["tau_v"])
    noise = torch.randn(B, H, J)
    first = model.sample(*cond, noise=noise)
    assert torch.equal(first, model.sample(*cond, noise=noise))
    restored = ActionDecoder(DecoderConfig.from_dict(model.config.to_dict()))
    restored.load_state_dict(model.state_dict())
    assert torch.equal(first, restored.eval().sample(*cond, noise=noise))
    seeded = [model.sample(*cond, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*seeded) and not torch.equal(seeded[0], first)


def test_noise_scale_zero_gives_the_one_chunk_the_flow_carries_zero_to() -> None:
    """noise_scale 0: every draw starts at zero, so the seed no longer matters; a scale in
    between starts from the scaled draw; a negative scale is refused."""
    torch.manual_seed(0)
    model = randomize_zero_init(ActionDecoder(tiny())).eval()
    x = inputs()
    cond = (x["features"], x["proprio"], x["tau_v"])
    chunks = [model.sample(*cond, generator=torch.Generator().manual_seed(s), noise_scale=0.0)
              for s in (1, 2)]
    assert torch.equal(*chunks)
    assert torch.equal(chunks[0], model.sample(*cond, noise=torch.zeros(B, H, J)))
    half = model.sample(*cond, generator=torch.Generator().manual_seed(1), noise_scale=0.5)
    draw = torch.randn(B, H, J, generator=torch.Generator().manual_seed(1))
    assert torch.equal(half, model.sample(*cond, noise=0.5 * draw))
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        model.sample(*cond, noise_scale=-0.1)


def test_loss_replays_with_a_generator() -> None:
    torch.manual_seed(0)
    model = randomize_zero_init(ActionDecoder(tiny()))
    x = inputs()
    losses = [model.loss(**x, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*losses)


def _nan_at_0(t: Tensor) -> Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


BAD_INPUTS: list[tuple[str, str, Callable[[Tensor], Tensor] | object, str]] = [
    ("loss", "features", lambda t: t[0], r"features must have shape \[B, N, Cf=8\]"),
    ("loss", "features", lambda t: t[..., :4], r"features must have shape"),
    ("loss", "features", lambda t: t.long(), "features must be a float tensor"),
    ("loss", "features", _nan_at_0, "features must be finite"),
    ("loss", "proprio", lambda t: t[:, :1], r"proprio must have shape \[B=3, J=2\]"),
    ("loss", "proprio", lambda t: t[:2], r"proprio must have shape"),
    ("loss", "proprio", lambda t: t.fill_(float("inf")), "proprio must be finite"),
    ("loss", "actions", lambda t: t[:, :4], r"actions must have shape \[B, H, J\] = \[3, 6, 2\]"),
    ("loss", "actions", _nan_at_0, "actions must be finite"),
    ("loss", "tau_v", lambda t: t[:, None], r"tau_v must have shape \[B=3\]"),
    ("loss", "tau_v", lambda t: t + 1.5, r"tau_v must lie in \[0, 1\]"),
    ("loss", "tau_v", lambda t: [0.5] * 3, "tau_v must be a float tensor"),
    ("sample", "noise", lambda t: torch.zeros(B, H + 1, J), r"noise must have shape"),
    ("sample", "steps", lambda t: 0, "steps must be an int >= 1"),
    ("velocity", "tau_a", lambda t: -t, r"tau_a must lie in \[0, 1\]"),
    ("velocity", "x_tau", _nan_at_0, "x_tau must be finite"),
]


@pytest.mark.parametrize("method, name, corrupt, match", BAD_INPUTS,
                         ids=[f"{m}-{n}-{i}" for i, (m, n, _, _) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_value_error_naming_the_expectation(
    method: str, name: str, corrupt: Callable, match: str
) -> None:
    torch.manual_seed(0)
    model = ActionDecoder(tiny())
    x = inputs()
    cond = {"features": x["features"], "proprio": x["proprio"], "tau_v": x["tau_v"]}
    args = {
        "loss": {**cond, "actions": x["actions"]},
        "sample": {**cond, "noise": torch.zeros(B, H, J), "steps": 2},
        "velocity": {**cond, "x_tau": x["actions"], "tau_a": torch.rand(B)},
    }[method]
    args[name] = corrupt(args[name].clone() if isinstance(args[name], Tensor) else args[name])
    with pytest.raises(ValueError, match=match):
        getattr(model, method)(**args)


# --- multimodal behaviour --------------------------------------------------------------------

@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores OpenMP spin-waits made training up to 15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_learns_both_modes_of_a_conditional_bimodal_task() -> None:
    """Flow matching keeps both modes at their true frequencies; a regression head cannot.

    Two classes c, each shown by its own fixed video features. The chunk is +a or -a for a
    fixed trajectory a, with P(+a) = 0.3 for c = 0 and 0.7 for c = 1. A regression head trained
    with MSE outputs the conditional mean, (2 P(+a) - 1) a = -0.4 a or +0.4 a: 0.6 |a| from the
    nearest real chunk and never a valid one. After 400 Adam steps the decoder's samples must
    pick each mode within 0.1 of its probability and sit within 0.25 |a| of a mode.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    steps, batch, samples = 400, 128, 1000
    model = ActionDecoder(tiny())
    protos = torch.randn(2, 4, CF, generator=g)  # [class, N, Cf]
    phase = 2 * torch.pi * torch.arange(H) / H
    a = torch.stack([torch.sin(phase), 0.5 * torch.cos(phase) + 0.5], dim=-1)  # [H, J]
    p_plus = torch.tensor([0.3, 0.7])

    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        c = torch.randint(0, 2, (batch,), generator=g)
        sign = torch.where(torch.rand(batch, generator=g) < p_plus[c], 1.0, -1.0)
        loss = model.loss(protos[c], 0.1 * torch.randn(batch, J, generator=g),
                          sign[:, None, None] * a, torch.rand(batch, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    model.eval()
    for c in (0, 1):
        chunks = model.sample(protos[c].expand(samples, -1, -1), torch.zeros(samples, J),
                              torch.ones(samples), generator=g)  # [S, H, J]
        freq_plus = ((chunks * a).sum((1, 2)) > 0).float().mean().item()
        to_mode = torch.minimum((chunks - a).flatten(1).norm(dim=1),
                                (chunks + a).flatten(1).norm(dim=1)) / a.norm()  # [S]
        near = (to_mode < 0.25).float().mean().item()
        print(f"class {c}: P(+a) sampled {freq_plus:.3f} (true {p_plus[c]:.1f}), "
              f"near a mode {near:.3f}, median distance {to_mode.median():.3f} |a|")
        assert abs(freq_plus - p_plus[c].item()) < 0.1
        assert near > 0.9


# --- instruction readout ---------------------------------------------------------------------

def test_instruction_readout_needs_the_instruction_and_a_token_grid() -> None:
    """It reads a fixed number of video tokens per instruction; older checkpoints (no key)
    load without it."""
    with pytest.raises(ValueError, match="instruction_readout needs text_dim"):
        tiny(instruction_readout=4, video_grid=(1, 1, N))
    with pytest.raises(ValueError, match="instruction_readout needs text_dim"):
        tiny(instruction_readout=4, text_dim=5)
    config = tiny(instruction_readout=4, text_dim=5, video_grid=(1, 1, N))
    assert DecoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in tiny().to_dict().items() if k != "instruction_readout"}
    assert DecoderConfig.from_dict(older).instruction_readout == 0


def test_readout_mean_is_added_to_the_sampled_flow() -> None:
    """The flow models the chunk minus the readout's mean: with the velocity still zero (the
    output layer's init), a sampled chunk is its start noise plus that mean."""
    model = ActionDecoder(tiny(instruction_readout=4, text_dim=5, video_grid=(1, 1, N))).eval()
    x = inputs()
    text = torch.randn(B, 3, 5, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(B, H, J)
    mean = model.condition(x["features"], text, x["proprio"]).mean
    assert mean is not None and mean.shape == (B, H, J) and mean.abs().max() > 1e-3
    chunk = model.sample(x["features"], x["proprio"], x["tau_v"], steps=3, noise=noise, text=text)
    torch.testing.assert_close(chunk, noise + mean)


def test_readout_mean_depends_on_the_arm_state() -> None:
    """A relative chunk's mean depends on where the arm is: the same picture and instruction
    with another proprio state give another mean."""
    model = ActionDecoder(tiny(instruction_readout=4, text_dim=5, video_grid=(1, 1, N))).eval()
    x = inputs()
    text = torch.randn(B, 3, 5, generator=torch.Generator().manual_seed(3))
    here = model.condition(x["features"], text, x["proprio"]).mean
    there = model.condition(x["features"], text, x["proprio"] + 1.0).mean
    assert here is not None and there is not None
    assert (here - there).abs().max() > 1e-3


def test_readout_binds_the_named_colour_to_where_it_is() -> None:
    """Three "colours" (fixed feature vectors) lie on three grid places in a random order; the
    instruction names a colour and the chunk is the trajectory of the place holding it. After
    300 Adam steps, 90% of chunks sampled for new orderings must go to the named place."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    colours = torch.randn(3, CF, generator=g)
    words = torch.randn(3, 1, 5, generator=g)  # one text token per colour word
    places = 2.0 * torch.randn(3, H, J, generator=g)  # the chunk that goes to each place
    model = ActionDecoder(tiny(instruction_readout=16, text_dim=5, video_grid=(1, 1, 3)))

    def batch(size: int) -> tuple[Tensor, Tensor, Tensor]:
        order = torch.argsort(torch.rand(size, 3, generator=g), dim=1)  # [S, place] -> colour
        named = torch.randint(0, 3, (size,), generator=g)
        place = (order == named[:, None]).float().argmax(dim=1)
        features = colours[order] + 0.1 * torch.randn(size, 3, CF, generator=g)
        return features, words[named], place

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        features, text, place = batch(64)
        loss = model.loss(features, torch.zeros(64, J), places[place], torch.ones(64),
                          generator=g, text=text)
        opt.zero_grad()
        loss.backward()
        opt.step()
    features, text, place = batch(300)
    chunks = model.eval().sample(features, torch.zeros(300, J), torch.ones(300), text=text,
                                 generator=g)
    nearest = ((chunks[:, None] - places[None]) ** 2).mean(dim=(2, 3)).argmin(dim=1)
    assert (nearest == place).float().mean() > 0.9
