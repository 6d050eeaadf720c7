"""The safety filter between model and arm: bounds hold for any finite input, NaN never passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT
from vam_policy.ros.parameters import load_parameters_file, settings_from_parameters
from vam_policy.ros.safety import (
    CommandStream,
    SafetyLimits,
    UnsafeTargetsError,
    _stoppable_speed,
    filter_targets,
)
from vam_policy.sim.trajectory import JointTrajectoryExecutor

TOL = 1e-9


@dataclass(frozen=True)
class Case:
    targets: np.ndarray
    current: np.ndarray
    start: np.ndarray | None  # the commanded position the targets continue; None: current
    velocity: np.ndarray | None
    dt: float
    first_dt: float | None
    limits: SafetyLimits


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def cases(draw: st.DrawFn, with_velocity: bool = True) -> Case:
    joints = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 8))

    def vector(lo: float, hi: float) -> np.ndarray:
        return np.array(draw(st.lists(_floats(lo, hi), min_size=joints, max_size=joints)))

    lower = vector(-3.0, 0.0)
    upper = lower + vector(0.05, 4.0)
    vmax, amax = vector(0.1, 3.0), vector(0.5, 20.0)
    current = lower + (upper - lower) * vector(0.0, 1.0)
    reach = draw(_floats(0.02, 2.0))
    limits = SafetyLimits(lower, upper, vmax, amax, reach)
    start = None
    if draw(st.booleans()):  # a command the arm lags behind, within reach of it
        start = np.clip(current + reach * vector(-0.999, 0.999), lower, upper)
    velocity = None
    if with_velocity and draw(st.booleans()):
        velocity = vmax * vector(-1.5, 1.5)
    targets = np.array(draw(st.lists(
        st.lists(_floats(-8.0, 8.0), min_size=joints, max_size=joints),
        min_size=steps, max_size=steps,
    )))
    first_dt = draw(st.one_of(st.none(), _floats(0.001, 0.2)))
    return Case(targets, current, start, velocity, draw(_floats(0.01, 0.2)), first_dt, limits)


def _run(case: Case, targets: np.ndarray | None = None):
    return filter_targets(
        case.targets if targets is None else targets, case.current, case.dt, case.limits,
        start_velocity=case.velocity, first_dt=case.first_dt, start=case.start,
    )


def _step_velocities(case: Case, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = np.full(len(positions), case.dt)
    steps[0] = case.first_dt or case.dt
    origin = case.current if case.start is None else case.start
    previous = np.vstack([origin, positions[:-1]])
    return (positions - previous) / steps[:, None], steps


@settings(max_examples=300, deadline=None)
@given(cases())
def test_any_finite_input_comes_out_inside_every_hard_bound(case: Case) -> None:
    """Position, distance and velocity bounds hold whatever the model says."""
    out = _run(case).positions
    limits = case.limits
    assert np.all(out >= limits.lower) and np.all(out <= limits.upper)
    assert np.all(np.abs(out - case.current) <= limits.max_step_from_current + TOL)
    velocity, _ = _step_velocities(case, out)
    assert np.all(np.abs(velocity) <= limits.max_velocity * (1 + TOL) + TOL)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_acceleration_bound_holds_after_the_first_step_and_from_rest(case: Case) -> None:
    """The braking reserve keeps every later step feasible; from rest, the first one too."""
    out = _run(case).positions
    velocity, steps = _step_velocities(case, out)
    start = np.zeros_like(case.current) if case.velocity is None else np.clip(
        case.velocity, -case.limits.max_velocity, case.limits.max_velocity)
    change = np.abs(np.diff(np.vstack([start, velocity]), axis=0))
    allowed = case.limits.max_acceleration * steps[:, None] * (1 + 1e-7) + 1e-7
    first = 0 if case.velocity is None else 1
    assert np.all(change[first:] <= allowed[first:])


@settings(max_examples=200, deadline=None)
@given(cases())
def test_filtering_twice_changes_nothing_more(case: Case) -> None:
    """Already-safe input (here: the filter's own output) comes back bit for bit."""
    once = _run(case)
    twice = _run(case, once.positions)
    assert np.array_equal(twice.positions, once.positions)
    if case.velocity is None:
        assert twice.adjusted == ()


@settings(max_examples=200, deadline=None)
@given(cases(), st.sampled_from([np.nan, np.inf, -np.inf]), st.sampled_from(
    ["targets", "current", "start", "velocity"]), st.integers(0, 100))
def test_any_non_finite_value_is_refused(case: Case, bad: float, where: str, pick: int) -> None:
    targets, current = case.targets.copy(), case.current.copy()
    start = current.copy() if case.start is None else case.start.copy()
    velocity = np.zeros_like(current) if case.velocity is None else case.velocity.copy()
    array = {"targets": targets, "current": current, "start": start, "velocity": velocity}[where]
    array.flat[pick % array.size] = bad
    with pytest.raises(UnsafeTargetsError, match="refusing to command"):
        filter_targets(targets, current, case.dt, case.limits, start_velocity=velocity,
                       start=start)


def _limits(**changes: object) -> SafetyLimits:
    values: dict[str, object] = dict(
        lower=[-1.0, -2.0], upper=[1.0, 2.0], max_velocity=[1.0, 1.0],
        max_acceleration=[10.0, 10.0], max_step_from_current=0.5, joint_names=("a", "b"),
    )
    values.update(changes)
    return SafetyLimits(**values)  # type: ignore[arg-type]


def test_slow_smooth_targets_pass_unchanged() -> None:
    limits = _limits()
    t = np.arange(1, 11)[:, None] * 0.1
    targets = 0.2 * np.sin(t) * np.array([1.0, -1.0])
    out = filter_targets(targets, np.zeros(2), 0.1, limits, start_velocity=0.2 * np.array(
        [1.0, -1.0]))
    assert np.array_equal(out.positions, targets) and not out.modified


def test_target_beyond_the_limit_stops_at_the_limit_and_is_reported() -> None:
    limits = _limits(max_velocity=[100.0, 100.0], max_acceleration=[1e6, 1e6],
                     max_step_from_current=5.0)
    out = filter_targets(np.array([[3.0, 0.0]] * 3), np.array([0.9, 0.0]), 0.1, limits)
    assert np.array_equal(out.positions[:, 0], [1.0, 1.0, 1.0])
    assert "position" in out.adjusted


def test_a_jump_is_slowed_to_the_velocity_limit() -> None:
    limits = _limits(max_acceleration=[1e6, 1e6])
    out = filter_targets(np.array([[0.5, 0.0]]), np.zeros(2), 0.1, limits)
    assert out.positions[0, 0] == pytest.approx(0.1)
    assert "velocity" in out.adjusted


def test_targets_far_from_the_arm_are_held_within_reach() -> None:
    limits = _limits(max_velocity=[100.0, 100.0], max_acceleration=[1e6, 1e6],
                     max_step_from_current=0.05)
    out = filter_targets(np.array([[0.0, -1.5]]), np.zeros(2), 0.1, limits)
    assert out.positions[0, 1] == pytest.approx(-0.05) and "distance" in out.adjusted


def test_a_gripper_closed_on_an_object_may_be_opened_again() -> None:
    """Fingers held short of their command by a cube are no blocked arm: with the gripper's
    whole range as its max_step_from_current, re-opening passes while the arm joint's own
    bound still latches a fault."""
    limits = _limits(lower=[-1.0, 0.0], upper=[1.0, 1.0], max_velocity=[1.0, 3.0],
                     max_acceleration=[10.0, 16.0], max_step_from_current=[0.5, 1.0])
    held = np.array([0.0, 0.49])  # commanded open (1.0), stopped by the cube at 0.49
    out = filter_targets(np.array([[0.0, 1.0]] * 5), held, 0.1, limits,
                         start=np.array([0.0, 1.0]), start_velocity=np.zeros(2))
    assert np.allclose(out.positions[:, 1], 1.0) and out.positions.shape == (5, 2)
    with pytest.raises(UnsafeTargetsError, match=r"'a'.*0.5 rad apart"):
        filter_targets(np.zeros((5, 2)), held, 0.1, limits, start=np.array([0.6, 1.0]))
    with pytest.raises(UnsafeTargetsError, match=r"'b'.*0.5 rad apart"):
        filter_targets(np.zeros((5, 2)), held, 0.1, _limits(lower=[-1.0, 0.0],
                       upper=[1.0, 1.0]), start=np.array([0.0, 1.0]))


def test_braking_reaches_the_limit_in_near_minimum_time_and_rests_there() -> None:
    """The braking reserve must be tight: a timid one would crawl towards the limit."""
    limits = SafetyLimits([-5.0], [1.0], [10.0], [2.0], 10.0)
    out = filter_targets(np.full((40, 1), 4.0), np.zeros(1), 0.1, limits)
    # Bang-bang over 1 rad at 2 rad/s^2 takes 2*sqrt(0.5) = 1.41 s; allow discretization.
    reached = int(np.argmax(np.isclose(out.positions[:, 0], 1.0, atol=1e-9)))
    assert out.positions[reached, 0] == pytest.approx(1.0, abs=1e-9) and reached <= 17
    assert np.allclose(out.positions[reached:, 0], 1.0, atol=1e-9)
    assert np.all(np.abs(np.diff(out.velocities[:, 0])) <= 2.0 * 0.1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(_floats(0.0, 5.0), _floats(0.5, 20.0), _floats(0.001, 0.2), _floats(0.01, 0.2))
def test_stoppable_speed_is_the_exact_discrete_braking_bound(room: float, amax: float,
                                                             step: float, dt: float) -> None:
    def distance(v: float) -> float:
        if not np.isfinite(v):
            return np.inf
        covered, v_k = v * step, v - amax * dt
        while v_k > 0:
            covered, v_k = covered + v_k * dt, v_k - amax * dt
        return covered

    speed = float(_stoppable_speed(np.array([room]), np.array([amax]), step, dt)[0])
    assert distance(speed) == pytest.approx(room, rel=1e-9, abs=1e-12)
    assert distance(speed * (1 + 1e-6) + 1e-9) > room


def test_a_joint_measured_outside_its_limits_gets_no_command() -> None:
    """Any target for such a joint would be outside the limits or a jump: refuse instead."""
    limits = _limits(max_acceleration=[1e6, 1e6])
    with pytest.raises(UnsafeTargetsError, match=r"joint 'a' is measured at 1.2000 rad, outside"):
        filter_targets(np.array([[0.5, 0.0]]), np.array([1.2, 0.0]), 0.1, limits)


def test_a_joint_just_past_its_limit_counts_as_at_it_within_the_tolerance() -> None:
    """A position controller sent a target at the limit overshoots it by a few mrad: within
    `limit_tolerance` the arm is still commanded, its targets inside the limits; beyond, as
    without a tolerance, nothing is sent."""
    limits = _limits(max_acceleration=[1e6, 1e6], limit_tolerance=0.01)
    current = np.array([1.007, -2.005])
    out = filter_targets(np.array([[1.5, -2.5], [0.9, -1.9]]), current, 0.1, limits)
    assert np.all(out.positions >= limits.lower) and np.all(out.positions <= limits.upper)
    np.testing.assert_allclose(out.positions[0], [1.0, -2.0])
    assert out.positions[1, 0] < 1.0 and "position" in out.adjusted
    with pytest.raises(UnsafeTargetsError, match=r"joint 'a' .* by more than "
                       r"joint_limit_tolerance 0.01 rad"):
        filter_targets(np.array([[0.5, 0.0]]), np.array([1.011, 0.0]), 0.1, limits)
    with pytest.raises(UnsafeTargetsError, match="outside"):
        filter_targets(np.array([[0.5, 0.0]]), current, 0.1, _limits(max_acceleration=[1e6, 1e6]))
    with pytest.raises(ValueError, match="limit_tolerance"):
        _limits(limit_tolerance=-0.01)


def test_first_step_closer_than_dt_gets_a_proportionally_smaller_move() -> None:
    """A first point due in 10 ms must not carry a whole dt's worth of motion."""
    limits = _limits(max_acceleration=[1e6, 1e6])
    out = filter_targets(np.array([[0.5, 0.0]]), np.zeros(2), 0.1, limits, first_dt=0.01)
    assert out.positions[0, 0] == pytest.approx(0.01)


def test_nan_error_names_the_joint_and_step() -> None:
    targets = np.zeros((3, 2))
    targets[2, 1] = np.nan
    with pytest.raises(UnsafeTargetsError, match=r"step 2, joint 'b'"):
        filter_targets(targets, np.zeros(2), 0.1, _limits())


def test_wrong_shapes_and_times_are_input_errors_not_unsafe_targets() -> None:
    limits = _limits()
    for call in (
        lambda: filter_targets(np.zeros((3, 3)), np.zeros(2), 0.1, limits),
        lambda: filter_targets(np.zeros((3, 2)), np.zeros(3), 0.1, limits),
        lambda: filter_targets(np.zeros((0, 2)), np.zeros(2), 0.1, limits),
        lambda: filter_targets(np.zeros((3, 2)), np.zeros(2), 0.0, limits),
    ):
        with pytest.raises(ValueError, match="expected") as caught:
            call()
        assert not isinstance(caught.value, UnsafeTargetsError)


def test_limits_from_a_profile_apply_velocity_scaling() -> None:
    values = load_parameters_file(REPO_ROOT / "config/ur5e.yaml")
    values["velocity_scaling"] = 0.25
    limits = SafetyLimits.from_settings(settings_from_parameters(values))
    assert limits.max_velocity == pytest.approx([np.pi / 4] * 6, rel=1e-6)
    assert limits.joint_names[0] == "shoulder_pan_joint" and limits.num_joints == 6


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="lower"):
        _limits(lower=[1.0, -2.0])
    with pytest.raises(ValueError, match="one value per joint"):
        _limits(max_velocity=[1.0])
    with pytest.raises(ValueError, match="max_step_from_current"):
        _limits(max_step_from_current=0.0)
    with pytest.raises(ValueError, match="max_step_from_current"):
        _limits(max_step_from_current=[0.5, 0.5, 0.5])


def test_targets_continue_the_command_the_arm_lags_behind() -> None:
    """From the command, a smooth continuation passes; from the lagging arm it would be bent."""
    limits = _limits()
    targets = np.array([[0.15, 0.0], [0.2, 0.0]])  # 0.5 rad/s on from the command, 20 ms ahead
    command, arm, velocity = np.array([0.14, 0.0]), np.array([0.1, 0.0]), np.array([0.5, 0.0])
    ahead = filter_targets(targets, arm, 0.1, limits, start_velocity=velocity, first_dt=0.02,
                           start=command)
    assert np.array_equal(ahead.positions, targets) and not ahead.modified
    behind = filter_targets(targets, arm, 0.1, limits, start_velocity=velocity, first_dt=0.02)
    assert "velocity" in behind.adjusted and behind.positions[0, 0] < 0.125


def test_a_command_the_arm_does_not_follow_is_refused() -> None:
    with pytest.raises(UnsafeTargetsError, match=r"'b' is commanded at 0\.6000 rad but measured "
                       r"at 0\.0000 rad.*does not follow its commands"):
        filter_targets(np.zeros((1, 2)), np.zeros(2), 0.1, _limits(), start=np.array([0.0, 0.6]))


def _sim_limits() -> SafetyLimits:
    values = load_parameters_file(REPO_ROOT / "config/sim_panda.yaml")
    return SafetyLimits.from_settings(settings_from_parameters(values))


def test_a_stream_of_trajectories_is_followed_as_planned_by_a_lagging_arm() -> None:
    """10 Hz trajectories of a smooth chunk, executed by the sim's controller for an arm 80 ms
    behind its command: the command follows the chunk exactly, within every limit."""
    limits = _sim_limits()
    middle = (limits.lower + limits.upper) / 2
    swing = np.linspace(0.1, 0.3, limits.num_joints)

    def planned(t: np.ndarray) -> np.ndarray:  # [n, J]; within the profile's limits
        return middle + swing * np.sin(1.5 * np.asarray(t))[:, None]

    lag_s, dt = 0.08, 0.1
    controller = JointTrajectoryExecutor(limits.joint_names, limits.lower, limits.upper)
    controller.reset(middle)
    stream = CommandStream(limits, dt)
    times = np.arange(0.0, 4.0, 0.001)
    commands = np.empty((len(times), limits.num_joints))
    tick = 0.037
    for i, t in enumerate(times):
        if t >= tick - 1e-12:
            seen = max(t - lag_s, 0.0)  # the arm: the command 80 ms ago
            arm = planned(np.array([seen]))[0]
            arm_velocity = 1.5 * swing * np.cos(1.5 * seen)
            grid = dt * np.arange(np.floor(t / dt) + 1, np.floor(t / dt) + 6)
            safe = stream.filter(t, grid - t, planned(grid), arm, arm_velocity)
            controller.submit(limits.joint_names, t, grid - t, safe.positions, t)
            tick += dt
        commands[i] = controller.sample(t)
    after = times >= 0.2  # the first trajectory starts from rest
    grid = dt * np.arange(0, 41)
    expected = np.stack([np.interp(times, grid, planned(grid)[:, j])
                         for j in range(limits.num_joints)], axis=1)
    assert np.allclose(commands[after], expected[after], atol=1e-9)
    velocity = np.diff(commands, axis=0) / 0.001
    assert np.all(np.abs(velocity) <= limits.max_velocity * (1 + 1e-6))


def test_after_a_reset_the_stream_starts_from_the_measured_state() -> None:
    limits = _limits(max_acceleration=[1e6, 1e6])
    stream = CommandStream(limits, 0.1)
    stream.filter(0.0, np.array([0.1]), np.array([[0.1, 0.0]]), np.zeros(2), None)
    held = stream.filter(0.2, np.array([0.1]), np.array([[0.2, 0.0]]), np.zeros(2), None)
    assert held.positions[0, 0] == pytest.approx(0.2)  # from the command held at 0.1
    stream.reset()
    fresh = stream.filter(0.3, np.array([0.1]), np.array([[0.2, 0.0]]), np.zeros(2), None)
    assert fresh.positions[0, 0] == pytest.approx(0.1)  # 1 rad/s from the arm at 0
