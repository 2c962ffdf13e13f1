import math
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

pytest.importorskip("ipywidgets", reason="the dashboard needs ipywidgets (absent on the "
                    "lent GPU machine, which runs the device tests only)")

from conftest import noisy_copy, tiny_model
from osd_lab.dashboard import DEFAULTS, Dashboard, check_settings, moving_window, status_line
from osd_lab.models import ZOO_DIR
from osd_lab.online import OnlineSpeculativeDecoder, default_update_interval
from osd_lab.policies import HeuristicPolicy

pytestmark = pytest.mark.widgets  # make test-min runs these on the lowest ipywidgets

PROMPTS = {"sql": ["SELECT name FROM", "SELECT id FROM books WHERE"],
           "math": ["Question: Ann has 3 apples.", "Question: A train runs 40 km"]}
GOOD = dict(draft_len=3, update_interval=2, temperature=0.0, loss="fkl", stream="sharp",
            queries=6, buffer_size=16, lr=1e-3, keep_fraction=0.0,
            draft_len_policy="constant")


@pytest.fixture(scope="module")
def dashboard():
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    target = tiny_model("llama", vocab_size=len(tokenizer))
    pair = SimpleNamespace(target=target, draft=noisy_copy(target, 0.5), tokenizer=tokenizer,
                           vocab_size=len(tokenizer))
    return Dashboard(pair, PROMPTS, max_new_tokens=8, redraw_every=3)


@pytest.mark.parametrize("change, message", [
    (dict(draft_len=0), "draft_len"), (dict(update_interval=100), "update_interval"),
    (dict(temperature=-0.1), "temperature"), (dict(loss="l2"), "loss"),
    (dict(stream="calm"), "stream"), (dict(queries=0), "queries"),
    (dict(draft_len=2.5), "draft_len"), (dict(queries="10"), "queries"),
    (dict(temperature=float("nan")), "temperature"), (dict(update_interval=True), "update_interval"),
    (dict(draft_len=float("nan")), "draft_len"), (dict(queries=float("inf")), "queries"),
    (dict(draft_len=2.0), "draft_len must be an integer"),
    (dict(temperature=float("inf")), "temperature"),
    # the new controls: each message names the setting and what it allows
    (dict(buffer_size=4), r"buffer_size must be an integer in \[8, 512\], got 4"),
    (dict(buffer_size=1024), "buffer_size must be an integer in"),
    (dict(buffer_size=16.0), "buffer_size must be an integer"),
    (dict(lr=0.0), r"lr must be a finite number in \[1e-05, 0.01\], got 0.0"),
    (dict(lr=0.5), "lr must be"), (dict(lr=float("nan")), "lr must be"),
    (dict(lr="1e-3"), "lr must be"),
    (dict(keep_fraction=-0.1), r"keep_fraction \(0: off, else AdaSPEC's k\) must be a finite "
                               r"number in \[0.0, 1.0\], got -0.1"),
    (dict(keep_fraction=1.5), "keep_fraction"), (dict(keep_fraction=None), "keep_fraction"),
    (dict(draft_len_policy="adaptive"),
     r"draft_len_policy must be one of \('constant', 'heuristic', 'goodput'\), got 'adaptive'"),
    (dict(draft_len_policy=None), "draft_len_policy"),
])
def test_bad_widget_values_are_reported_not_run(dashboard, change, message):
    with pytest.raises(ValueError, match=message):
        check_settings(**(GOOD | change))
    assert dashboard.run(GOOD | change) is None
    assert "Not run" in dashboard.status.value
    assert change.popitem()[0].split()[0] in dashboard.status.value


def test_missing_or_unknown_settings_are_reported(dashboard):
    assert dashboard.run({k: v for k, v in GOOD.items() if k != "loss"}) is None
    assert "Not run" in dashboard.status.value and "settings must be exactly" in dashboard.status.value
    assert dashboard.run(GOOD | dict(colour="red")) is None
    # issue 13: an empty dict silently ran with the widgets' values
    assert dashboard.run({}) is None
    assert "Not run" in dashboard.status.value and "settings must be exactly" in dashboard.status.value
    assert dashboard.run(["draft_len"]) is None and "settings must be a dict" in dashboard.status.value


def test_defaults_are_the_widgets_and_pass_the_check(dashboard):
    fresh = Dashboard(dashboard.pair, PROMPTS)
    # the update interval starts where the decoder's own default would be on this machine
    assert fresh.defaults == DEFAULTS | dict(update_interval=default_update_interval())
    assert fresh.settings() == fresh.defaults
    check_settings(**fresh.defaults)
    # the lr slider's ends are inside the check's range (FloatLogSlider computes base ** exponent)
    for exponent in (fresh.controls["lr"].min, fresh.controls["lr"].max):
        fresh.controls["lr"].value = 10.0 ** exponent
        check_settings(**fresh.settings())


def test_run_writes_status_progress_and_plot_into_widgets(dashboard):
    draft_before = [p.clone() for p in dashboard.pair.draft.parameters()]
    decoder = dashboard.run(GOOD)
    h = decoder.history
    assert len(h["alpha"]) == 6 and len(h["updates"]) == 3
    # every query also decoded plainly: the speedup's baseline is the same queries
    assert len(h["baseline_s"]) == 6 and all(s > 0 for s in h["baseline_s"])
    status = dashboard.status.value
    assert status.startswith("query 6/6: served") and "vs plain decoding" in status
    assert "x</b>" in status and "mean alpha" in status and "3 updates" in status
    assert (dashboard.progress.value, dashboard.progress.max) == (6, 6)
    assert dashboard.plot.value[:4] == b"\x89PNG"
    assert not dashboard.button.disabled
    # the dashboard distils a copy: the pair's draft is untouched
    assert all((a == b).all() for a, b in zip(draft_before, dashboard.pair.draft.parameters()))


def test_settings_reach_the_decoder(dashboard):
    decoder = dashboard.run(GOOD | dict(buffer_size=8, lr=1e-4, keep_fraction=0.5,
                                        draft_len_policy="heuristic", draft_len=2))
    assert decoder.buffers["draft"].maxlen == 8 and decoder.config.keep_fraction == 0.5
    assert decoder.optimizers["draft"].param_groups[0]["lr"] == 1e-4
    assert decoder.references  # AdaSPEC's reference draft
    assert isinstance(decoder.policies["draft"], HeuristicPolicy) and decoder.draft_len == 2
    plain = dashboard.run(GOOD)  # keep fraction 0: plain distillation, no reference
    assert plain.config.keep_fraction is None and not plain.references


def test_goodput_costs_are_measured_once(dashboard):
    first = dashboard.run(GOOD | dict(draft_len_policy="goodput", queries=2))
    costs = dashboard.costs
    assert costs is not None and first.policies["draft"].costs is costs
    second = dashboard.run(GOOD | dict(draft_len_policy="goodput", queries=2))
    assert second.policies["draft"].costs is costs
    assert dashboard.status.value.startswith("query 2/2")


def test_run_button_is_disabled_during_a_run(dashboard):
    seen = []  # the button's state whenever the run writes its status
    watch = lambda change: seen.append(dashboard.button.disabled)  # noqa: E731
    dashboard.status.observe(watch, "value")
    try:
        dashboard.run(GOOD)
    finally:
        dashboard.status.unobserve(watch, "value")
    assert seen and all(seen) and not dashboard.button.disabled


def test_run_button_comes_back_after_an_error(dashboard, monkeypatch):
    def broken(self, prompt, domain=None):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(OnlineSpeculativeDecoder, "serve", broken)
    with pytest.raises(RuntimeError):
        dashboard.run(GOOD)
    assert not dashboard.button.disabled


def test_moving_window_stays_inside_a_domain_block():
    assert moving_window("sharp", ["sql"] * 30 + ["math"] * 30) == 20
    assert moving_window("sharp", ["sql"] * 30 + ["math"] * 7 + ["code"] * 30) == 7
    assert moving_window("iid", ["sql", "math"] * 30) == 20
    assert moving_window("smooth", ["sql"] * 5) == 5


def test_moving_averages_restart_at_each_block_of_a_sharp_stream():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from osd_lab.plots import plot_by_block

    def lines(values, domains, window):
        ax = plt.subplots()[1]
        plot_by_block(ax, values, domains, window)
        plt.close(ax.figure)
        return [list(line.get_ydata()) for line in ax.lines]

    values, domains = [1.0, 1.0, 1.0, 0.0, 0.0], ["sql"] * 3 + ["math"] * 2
    assert lines(values, domains, 3) == [[1.0, 1.0, 1.0], [0.0, 0.0]]
    iid = ["sql", "math"] * 10  # shifts at every query: one plain moving average
    (iid_line,) = lines([1.0, 0.0] * 10, iid, 2)
    assert iid_line[1:3] == [0.5, 0.5]


def test_status_skips_queries_that_drafted_nothing():
    history = dict(domain=["sql"] * 3, alpha=[0.5, math.nan, 0.7], new_tokens=[8, 8, 8],
                   latency_s=[0.1, 0.1, 0.1], update_s=[0.0, 0.1, 0.0],
                   baseline_s=[0.1, 0.1, 0.1], baseline_tokens=[8, 8, 8], updates=[(2, "d", 1, 1)])
    line = status_line(history, 3, 5)
    assert line.startswith("query 3/5") and "mean alpha 0.600" in line and "1 updates" in line
    assert "0.75x" in line and "updates 25% of the time" in line
    assert "n/a" in status_line(history | dict(alpha=[math.nan] * 3), 3, 3)


def test_widget_values_feed_the_run(dashboard):
    dashboard.controls["queries"].value = 3
    dashboard.controls["draft_len"].value = 2
    dashboard.controls["draft_len_policy"].value = "constant"
    dashboard.controls["buffer_size"].value = 64
    dashboard.controls["lr"].value = 1e-4
    dashboard.controls["keep_fraction"].value = 0.5
    assert dashboard.settings()["queries"] == 3 and dashboard.settings()["keep_fraction"] == 0.5
    dashboard.button.click()
    assert dashboard.status.value.startswith("query 3/3")
