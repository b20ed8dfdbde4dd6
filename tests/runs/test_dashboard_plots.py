"""The SVG line charts and the grouping of metric names into charts. Pure functions: no database."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from app.runs import dashboard, plots
from tests.factories import words

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314  (our own output; parsing proves it is well-formed)


def _polylines(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for line in root.iter(f"{SVG}polyline"):
        pts = [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]
        out[line.attrib["data-series"]] = pts
    return out


class TestLineChart:
    def test_one_polyline_per_series_with_every_point(self) -> None:
        svg = plots.line_chart(
            {
                "train/loss": [(s, 1.0 / s) for s in range(1, 21)],
                "val/loss": [(5, 0.4), (10, 0.3), (15, 0.25), (20, 0.2)],
            },
            title="Loss",
        )
        root = _parse(svg)
        lines = _polylines(root)
        assert set(lines) == {"train/loss", "val/loss"}
        assert len(lines["train/loss"]) == 20 and len(lines["val/loss"]) == 4
        # Higher values sit higher on screen (smaller y); steps run left to right.
        train = lines["train/loss"]
        assert train[0][1] < train[-1][1] and train[0][0] < train[-1][0]
        texts = "".join(root.itertext())
        assert "Loss" in texts and "step" in texts and "train/loss" in texts and "val/loss" in texts

    def test_points_stay_inside_the_viewbox(self) -> None:
        root = _parse(plots.line_chart({"kl": [(0, -3.5), (7, 120.0), (13, 42.0)]}))
        width, height = float(root.attrib["width"]), float(root.attrib["height"])
        for x, y in _polylines(root)["kl"]:
            assert 0 <= x <= width and 0 <= y <= height

    def test_labels_are_escaped(self) -> None:
        evil = '<script>alert("x")</script> & "q"'
        svg = str(plots.line_chart({evil: [(1, 1.0), (2, 2.0)]}, title="<b>t</b>", x_label="<i>"))
        assert "<script>" not in svg and "<b>" not in svg and "<i>" not in svg
        assert "&lt;script&gt;" in svg and "&lt;b&gt;t&lt;/b&gt;" in svg
        root = _parse(svg)  # still well-formed XML
        assert list(_polylines(root)) == [evil]
        assert evil in "".join(root.itertext())

    def test_non_finite_values_are_left_out_and_empty_charts_say_so(self) -> None:
        lines = _polylines(
            _parse(plots.line_chart({"loss": [(1, 1.0), (2, math.nan), (3, math.inf), (4, 0.5)]}))
        )
        assert len(lines["loss"]) == 2
        empty = plots.line_chart({"loss": [(1, math.nan)]}, title="Loss")
        assert "<polyline" not in empty and "no data yet" in empty
        assert "no data yet" in plots.line_chart({})

    def test_a_single_point_and_a_flat_line_draw(self) -> None:
        one = _parse(plots.line_chart({"reward": [(3, 0.5)]}))
        assert len(_polylines(one)["reward"]) == 1 and one.find(f".//{SVG}circle") is not None
        flat = _polylines(_parse(plots.line_chart({"beta": [(1, 0.02), (2, 0.02), (3, 0.02)]})))
        ys = {y for _, y in flat["beta"]}
        assert len(ys) == 1 and all(math.isfinite(y) for y in ys)

    def test_long_series_are_thinned_keeping_first_and_last(self) -> None:
        pts = [(s, float(s)) for s in range(10_000)]
        kept = plots.thin(pts, limit=500)
        assert len(kept) == 500 and kept[0] == pts[0] and kept[-1] == pts[-1]
        lines = _polylines(_parse(plots.line_chart({"x": pts})))
        assert len(lines["x"]) == plots.MAX_POINTS


class TestTicks:
    def test_ticks_are_round_and_cover_the_range(self) -> None:
        ticks = plots.nice_ticks(0.013, 0.87)
        assert ticks[0] <= 0.013 and ticks[-1] >= 0.87
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1 and steps.pop() in (0.1, 0.2, 0.25, 0.5)
        assert plots.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
        assert plots.fmt(0.25) == "0.25" and plots.fmt(2e6) == "2e+06" and plots.fmt(0) == "0"


class TestGroupMetrics:
    def test_reward_model_curves_group_into_loss_and_accuracy(self) -> None:
        groups = dict(
            dashboard.group_metrics(
                {
                    "train/loss": [(1, 0.7)],
                    "val/loss": [(1, 0.69)],
                    "val/accuracy": [(1, 0.6)],
                }
            )
        )
        assert set(groups) == {"Loss", "Accuracy"}
        assert set(groups["Loss"]) == {"train/loss", "val/loss"}

    def test_ppo_metrics_each_get_their_chart_and_unknown_names_still_show(self) -> None:
        names = words(
            "ppo/mean_reward ppo/kl ppo/entropy ppo/clip_frac ppo/approx_kl ppo/value_loss "
            "ppo/explained_variance ppo/ptx_loss ppo/response_length ppo/no_eos_share"
        )
        groups = dict(
            dashboard.group_metrics(
                {n: [(1, 0.0)] for n in names}
                | {"custom/a": [(1, 1.0)], "custom/b": [(1, 2.0)], "weird": [(1, 3.0)]}
            )
        )
        assert len(groups) == len(names) + 2
        assert set(groups["custom"]) == {"custom/a", "custom/b"} and "weird" in groups
        assert "KL to the reference" in groups and "Approximate KL (old → new)" in groups


def test_one_point_gets_an_axis_from_zero_to_its_step() -> None:
    """A run's first metric (step 4): the x axis runs 0..4, not 3.6..4.4."""
    svg = str(plots.line_chart({"loss": [(4, 0.7)]}))
    labels = re.findall(r'text-anchor="middle">([^<]+)</text>', svg)
    assert labels[0] == "0" and "4" in labels and "3.6" not in labels and "4.4" not in labels
    assert "<circle" in svg
