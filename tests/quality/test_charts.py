from app.quality.charts import Bar, bar_chart


def test_bar_chart_escapes_labels_and_draws_bars_and_intervals() -> None:
    svg = str(
        bar_chart(
            [Bar("<script>x</script>", 0.5, 0.4, 0.6), Bar("b", None), Bar("c", 1.0, ref=0.25)],
            title="T & U",
            ref=0.5,
            ref_label="half",
        )
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "T &amp; U" in svg
    assert svg.count("<rect") == 2  # no bar for a missing value
    assert "95% interval 40% to 60%" in svg and "half" in svg and "n/a" in svg


def test_empty_chart_says_so() -> None:
    assert "no data yet" in str(bar_chart([], title="empty"))
