"""Smoke tests of the notebooks' pictures (osd_lab.diagrams, osd_lab.plots): each
function draws with the Agg backend and returns its Axes."""


# --- notebook 06 (helper D): the OSD loop and the online run's plots ---

def test_draw_osd_loop_returns_axes():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    from osd_lab.diagrams import draw_osd_loop
    ax = draw_osd_loop(update_interval=4)
    assert isinstance(ax, Axes)
    assert any("every 4 queries" in t.get_text() for t in ax.texts)
    plt.close(ax.figure)


def _sharp_history():
    domains = ["sql"] * 5 + ["math"] * 5
    return dict(domain=domains, alpha=[0.9] * 5 + [0.3] * 5, tau=[3.0] * 5 + [1.2] * 5,
                new_tokens=[10] * 10, latency_s=[0.1] * 10, update_s=[0.0] * 10,
                baseline_tokens=[10] * 10, baseline_s=[0.12] * 10, updates=[(4, "draft", 0.5, 8)])


def test_online_plots_draw_one_line_per_block():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    from osd_lab.plots import plot_alpha, plot_speed, plot_tau
    history = _sharp_history()
    ax = plot_alpha(history, window=3)
    averages = [line for line in ax.lines if line.get_color() == "tab:blue"
                and line.get_linestyle() == "-"]
    assert len(averages) == 2  # one per block: no line joins sql and math
    assert max(averages[1].get_ydata()) < 0.5  # the math block's average holds no sql query
    for draw in (plot_tau, plot_speed):
        assert isinstance(draw(history, window=3), Axes)
    plt.close("all")


# --- notebooks 08 and 09 (helper E): BASS schedule, counts, method bars ---

def test_plot_count_grid():
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from osd_lab.plots import plot_count_grid

    ax = plot_count_grid([[0, 4, 2], [1, math.nan, math.nan]], ["sql", "code"], max_count=4)
    assert isinstance(ax, plt.Axes)
    plt.close(ax.figure)


def test_plot_draft_schedule():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from osd_lab.plots import plot_draft_schedule

    ax = plot_draft_schedule([7, 9, 11], [20, 5, 2], [7, 5, 2], [7, 3, 0], title="t")
    assert isinstance(ax, plt.Axes)
    plt.close(ax.figure)


def test_plot_method_bars():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from osd_lab.plots import plot_method_bars

    values = {"a": {"sql": 1.2, "code": 0.8}, "b": {"sql": 1.0, "code": 0.9}}
    errors = {"a": {"sql": (1.1, 1.3), "code": (0.7, 0.9)}}
    ax = plot_method_bars(values, errors, ylabel="speedup", reference=1)
    assert isinstance(ax, plt.Axes) and len(ax.patches) == 4 and not ax.texts
    plt.close(ax.figure)
    ax = plot_method_bars(values, value_labels=True)  # e.g. alpha before and after (06)
    assert sorted(t.get_text() for t in ax.texts) == ["0.80", "0.90", "1.00", "1.20"]
    plt.close(ax.figure)


# --- notebook 02 (helper A): the speculative step and the overlap of p and q ---

def test_draw_speculative_step():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pytest

    from osd_lab.diagrams import draw_speculative_step
    for accepted in (0, 2, 4):
        ax = draw_speculative_step(draft_len=4, accepted=accepted)
        assert isinstance(ax, plt.Axes)
        assert any(f"{accepted} kept" in t.get_text() for t in [ax.title])
        plt.close(ax.figure)
    with pytest.raises(ValueError):
        draw_speculative_step(draft_len=4, accepted=5)


def test_draw_overlap_and_residual():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from osd_lab.diagrams import draw_overlap_and_residual
    fig = draw_overlap_and_residual([0.3, 0.25, 0.2, 0.1, 0.1, 0.05],
                                    [0.05, 0.1, 0.4, 0.3, 0.1, 0.05])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert any("alpha = 0.60" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    plt.close(fig)
