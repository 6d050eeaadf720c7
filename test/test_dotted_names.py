"""Dotted names of nested mappings: ROS parameter files and config diffs."""

from __future__ import annotations

from vam_policy.dotted_names import differing_names, flatten


def test_flatten_names_leaves_by_their_path() -> None:
    tree = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}
    assert flatten(tree) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    assert flatten({"k": 1}, "ns.") == {"ns.k": 1}


def test_differing_names_include_fields_only_one_side_has() -> None:
    a = {"loop": {"steps": 10, "seed": 0}, "lr": 1e-3}
    b = {"loop": {"steps": 20, "seed": 0, "extra": True}, "lr": 1e-3}
    assert differing_names(a, b) == ["loop.extra", "loop.steps"]
    assert differing_names(a, a) == []
