"""`dsla_serve.quality.plots.plot_by_depth`: lines across depths, bars when every series has one depth."""

import matplotlib

matplotlib.use("Agg")

from dsla_serve.quality import plots  # noqa: E402


def _axes_of(monkeypatch):
    """Capture the figure plot_by_depth saves, instead of writing it."""
    saved = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.setdefault("fig", fig) and path)
    return saved


def test_series_over_several_depths_are_lines(monkeypatch, tmp_path):
    saved = _axes_of(monkeypatch)
    plots.plot_by_depth({"dsla": ([2, 4], [51.0, 60.0]), "gla": ([2, 4], [52.0, 63.0])}, tmp_path / "p.png",
                        "ppl", "t", reference=47.0)
    ax = saved["fig"].axes[0]
    assert len(ax.lines) == 3 and not ax.patches  # two series and the teacher's line


def test_series_at_one_depth_are_bars_with_their_values(monkeypatch, tmp_path):
    saved = _axes_of(monkeypatch)
    plots.plot_by_depth({"dsla": ([4], [56.5]), "gla": ([4], [56.6]), "swa": ([4], [50.5])}, tmp_path / "p.png",
                        "validation perplexity", "at L/2", reference=49.0)
    ax = saved["fig"].axes[0]
    assert [round(p.get_width(), 1) for p in ax.patches] == [56.5, 56.6, 50.5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dsla", "gla", "swa"]
    assert "depth 4" in ax.get_title() and ax.get_xlim()[1] > 56.6  # the longest bar's label fits


def test_one_depth_plot_is_written_as_png(tmp_path):
    path = plots.plot_by_depth({"dsla": ([4], [0.6])}, tmp_path / "one.png", "passkey", "t")
    assert path.read_bytes()[:4] == b"\x89PNG"
