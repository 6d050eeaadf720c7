"""`vam experiment sample-efficiency`: the demos ratio and the report (the experiment itself
takes minutes and is not run here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vam_policy.experiment import (
    QUICK,
    demos_needed,
    demos_ratio,
    error_demos_ratio,
    error_ratio_of,
    first_per_task,
    plan_dict,
    ratio_of,
    reanalysed,
    summary_table,
    write_report,
)


def test_demos_needed_interpolates_linearly_in_log_n() -> None:
    """Between 4 (20%) and 16 (60%), 40% is halfway in log N: 8 demos."""
    curve = [(16, 0.6), (4, 0.2), (32, 0.9)]
    assert demos_needed(curve, 0.4) == pytest.approx(8.0)
    assert demos_needed(curve, 0.6) == pytest.approx(16.0)
    assert demos_needed(curve, 0.1) == 4.0  # reached at the smallest N already
    assert demos_needed(curve, 0.95) is None


def test_ratio_when_both_arms_reach_the_level() -> None:
    """The video arm's level at its smallest N (40%, under the 50% cap); the image arm gets
    there halfway in log N between 8 (20%) and 16 (60%): 8 sqrt(2) demos, ratio 2 sqrt(2)."""
    ratio = demos_ratio([(4, 0.4), (8, 0.6), (16, 0.8)], [(4, 0.0), (8, 0.2), (16, 0.6)])
    assert ratio.level == pytest.approx(0.4)
    assert ratio.video_demos == 4.0
    assert ratio.image_demos == pytest.approx(8 * math.sqrt(2))
    assert ratio.ratio == pytest.approx(2 * math.sqrt(2))
    assert ratio.bound == "="
    assert "demos ratio" in ratio.text and "40% success" in ratio.text


def test_ratio_level_is_capped() -> None:
    """A video arm at 90% with its fewest demos is compared at 50%."""
    ratio = demos_ratio([(2, 0.9), (4, 1.0)], [(2, 0.0), (4, 1.0)])
    assert ratio.level == 0.5
    assert ratio.image_demos == pytest.approx(math.sqrt(8))  # halfway between 2 and 4 in log
    assert ratio.ratio == pytest.approx(math.sqrt(8) / 2)


def test_ratio_is_a_lower_bound_when_the_image_arm_never_reaches_it() -> None:
    ratio = demos_ratio([(5, 0.5), (10, 0.7), (20, 0.9)], [(5, 0.0), (10, 0.1), (20, 0.3)])
    assert ratio.bound == ">="
    assert ratio.video_demos == 5.0 and ratio.image_demos is None
    assert ratio.ratio == pytest.approx(20 / 5)
    assert ">= 4.0x" in ratio.text


def test_ratio_is_undefined_when_neither_arm_reaches_the_level() -> None:
    """At a given level neither reaches: no ratio, with the reason; an all-zero video arm
    gives no level at all."""
    ratio = demos_ratio([(5, 0.1), (10, 0.2)], [(5, 0.0), (10, 0.1)], level=0.5)
    assert ratio.ratio is None and ratio.bound is None
    assert ratio.video_demos is None and ratio.image_demos is None
    assert "neither arm reaches 50%" in ratio.text
    none = demos_ratio([(5, 0.0), (10, 0.0)], [(5, 0.0), (10, 0.0)])
    assert none.ratio is None and none.level is None and "solved no episode" in none.text


def test_ratio_is_undefined_when_only_the_image_arm_reaches_the_level() -> None:
    ratio = demos_ratio([(5, 0.1), (10, 0.2)], [(5, 0.3), (10, 0.6)], level=0.5)
    assert ratio.ratio is None and ratio.image_demos is not None
    assert "video arm does not reach" in ratio.text


def test_error_ratio_reads_the_image_arm_at_the_video_arms_first_error() -> None:
    video = [(5, 0.089), (10, 0.075), (20, 0.062)]
    ratio = error_demos_ratio(video, [(5, 0.098), (10, 0.079), (20, 0.064)])
    # 0.089 lies 9/19 of the way from 0.098 (5 demos) to 0.079 (10 demos), linear in log N
    assert ratio.level == 0.089 and ratio.video_demos == 5 and ratio.bound == "="
    assert ratio.image_demos == pytest.approx(5 * 2 ** (9 / 19))
    assert ratio.ratio == pytest.approx(2 ** (9 / 19))
    assert "1.4x" in ratio.text and "0.089 rad" in ratio.text


def test_error_ratio_bounds() -> None:
    never = error_demos_ratio([(5, 0.05), (10, 0.04)], [(5, 0.09), (10, 0.07)])
    assert (never.bound, never.ratio, never.image_demos) == (">=", 2.0, None)
    assert ">= 2.0x" in never.text
    better = error_demos_ratio([(5, 0.09), (10, 0.07)], [(5, 0.08), (10, 0.06)])
    assert (better.bound, better.ratio) == ("<=", 1.0) and "<= 1.0x" in better.text


def test_first_per_task_takes_the_lowest_seeds() -> None:
    bags = [Path(f"demos/{task}_{seed:04d}") for task in ("lift_red", "push_red_left")
            for seed in (3, 0, 1)]
    chosen = first_per_task(bags, 2)
    assert [b.name for b in chosen["lift_red"]] == ["lift_red_0000", "lift_red_0001"]
    assert [b.name for b in chosen["push_red_left"]] == ["push_red_left_0000",
                                                         "push_red_left_0001"]


def _synthetic_results() -> dict:
    rates = {("video", 2): (0.5, 0.6), ("video", 4): (0.8, 1.0),
             ("image", 2): (0.0, 0.1), ("image", 4): (0.3, 0.5)}
    errors = {"video": 0.05, "image": 0.08}
    runs = [{"arm": arm, "demos_per_task": n, "seed": seed, "step": 40, "success_rate": rate,
             "successes": round(10 * rate), "episodes": 10, "per_task": {"lift_red": rate},
             "heldout_action_mae_rad": errors[arm] * (2 / n) + 0.01 * seed}
            for (arm, n), pair in rates.items() for seed, rate in enumerate(pair)]
    convergence = [{"arm": arm, "demos_per_task": 4, "seed": 0, "step": step,
                    "success_rate": rate, "per_task": {"lift_red": rate},
                    "heldout_action_mae_rad": errors[arm] * 40 / step}
                   for arm, curve in (("video", (0.3, 0.8)), ("image", (0.1, 0.3)))
                   for step, rate in zip((20, 40), curve, strict=True)]
    table = summary_table(runs)
    return {
        "experiment": "sample-efficiency",
        "command": "vam experiment sample-efficiency --quick",
        "plan": {**plan_dict(QUICK), "seeds": [0, 1]},
        "machine": {"device": "cpu", "cpu": "Test CPU", "cpu_count": 2},
        "started": "2025-01-01T00:00:00",
        "timings_s": {"vae": 12.0, "total": 300.0},
        "runs": runs, "convergence": convergence, "table": table,
        "demos_ratio": ratio_of(table).__dict__,
        "error_ratio": error_ratio_of(table).__dict__,
    }


def test_summary_table_means_and_std_over_seeds() -> None:
    rows = {(r["arm"], r["demos_per_task"]): r for r in _synthetic_results()["table"]}
    assert rows["video", 4]["mean"] == pytest.approx(0.9)
    assert rows["video", 4]["std"] == pytest.approx(math.sqrt(0.02))
    assert rows["image", 2]["runs"] == 2
    assert rows["image", 2]["error_mean"] == pytest.approx(0.085)
    assert rows["image", 2]["error_std"] == pytest.approx(math.sqrt(0.00005))


def test_report_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    results = _synthetic_results()
    json_path, md_path, png_path = write_report(results, tmp_path / "results")
    assert json.loads(json_path.read_text())["runs"] == results["runs"]
    markdown = md_path.read_text()
    assert "| pretraining | N=2 | N=4 |" in markdown
    assert "| video | 55 ± 7% | 90 ± 14% |" in markdown
    assert "| image | 5 ± 7% | 40 ± 14% |" in markdown
    assert "demos ratio (image / video)" in markdown
    assert "| video | 0.055 ± 0.007 | 0.030 ± 0.007 |" in markdown  # held-out error
    assert "demos ratio at equal held-out error (image / video)" in markdown
    assert "| video | 20 | 30% | 0.100 |" in markdown  # convergence table
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_path.stat().st_size > 20_000


def test_report_rewritten_from_a_runs_json(tmp_path: Path) -> None:
    """`--report`: the same runs, the table and ratios analysed again, the rewrite noted."""
    results = _synthetic_results()
    stale = {key: value for key, value in results.items() if key != "error_ratio"}
    stale["table"] = []
    again = reanalysed(stale)
    assert again["runs"] == results["runs"] and again["table"] == results["table"]
    assert again["error_ratio"] == results["error_ratio"]
    markdown = write_report(again, tmp_path)[1].read_text()
    assert "rewritten from the run's JSON by revision" in markdown


def test_command_line_overrides_the_plan() -> None:
    from vam_policy.cli import build_parser
    from vam_policy.experiment import FULL, idm_config, plan_from_args

    parse = build_parser().parse_args
    args = parse(["experiment", "sample-efficiency", "--demos", "20,5,10,5", "--seeds", "3",
                  "--tasks", "lift_blue", "--idm-steps", "90"])
    plan = plan_from_args(args)
    assert plan.demos_per_task == (5, 10, 20) and plan.seeds == (3,)
    assert plan.tasks == ("lift_blue",) and plan.idm_steps == 90
    assert plan.vae_steps == FULL.vae_steps
    assert plan_from_args(parse(["experiment", "sample-efficiency", "--quick"])) == QUICK
    assert plan.heldout_demos_per_task == FULL.heldout_demos_per_task
    loop = idm_config(plan, 3).loop
    assert (loop.seed, loop.save_every, loop.eval_every, loop.keep_checkpoints) == (3, 30, 30, 4)
    for bad in (["--demos", "0"], ["--episodes", "0"], ["--demos", "2000"],
                ["--heldout-demos", "0"], ["--pretrain-demos", "10001"]):
        with pytest.raises(ValueError):
            plan_from_args(parse(["experiment", "sample-efficiency", *bad]))
