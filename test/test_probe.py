"""benchmarks/probe_cube_position.py's read-outs: a ridge fit per colour word against each
word's mean, on synthetic inputs whose target is a known linear map."""

from __future__ import annotations

import numpy as np
import probe_cube_position as probe


def _split(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    features = rng.normal(size=(count, 40))
    word = np.where(np.arange(count) % 2, "red", "blue")
    offset = np.where(word == "red", 5.0, -5.0)[:, None]  # each word its own mean
    xy = features[:, :2] * [2.0, -1.0] + offset
    return {"features": features, "xy": xy, "word": word}


def test_ridge_reads_a_linear_target_the_word_mean_cannot() -> None:
    rng = np.random.default_rng(0)
    train, test = _split(rng, 200), _split(rng, 50)
    ridge = probe.ridge_errors(train, test, "features", ridge=1.0)
    mean = probe.mean_errors(train, test)
    assert ridge.shape == mean.shape == (50, 2)
    assert ridge.mean(0).max() < 0.1  # the map is recovered from 200 examples
    assert mean.mean(0).min() > 0.5  # the word's mean knows only the offset between words
    # per word in sorted order, each test target against its word's training mean
    expected = [np.abs(test["xy"][test["word"] == word]
                       - train["xy"][train["word"] == word].mean(0)) for word in ("blue", "red")]
    np.testing.assert_allclose(mean, np.concatenate(expected))
