from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

pytest.importorskip("ipywidgets", reason="the dashboard needs ipywidgets (absent on the "
                    "lent GPU machine, which runs the device tests only)")

from conftest import noisy_copy, tiny_model
from osd_lab.dashboard import Dashboard, check_settings
from osd_lab.models import ZOO_DIR

pytestmark = pytest.mark.widgets  # make test-min runs these on the lowest ipywidgets

PROMPTS = {"sql": ["SELECT name FROM", "SELECT id FROM books WHERE"],
           "math": ["Question: Ann has 3 apples.", "Question: A train runs 40 km"]}
GOOD = dict(draft_len=3, update_interval=2, temperature=0.0, loss="fkl", stream="sharp",
            queries=6)


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
])
def test_bad_widget_values_are_reported_not_run(dashboard, change, message):
    with pytest.raises(ValueError, match=message):
        check_settings(**(GOOD | change))
    assert dashboard.run(GOOD | change) is None
    assert "Not run" in dashboard.status.value and message in dashboard.status.value


def test_missing_or_unknown_settings_are_reported(dashboard):
    assert dashboard.run({k: v for k, v in GOOD.items() if k != "loss"}) is None
    assert "Not run" in dashboard.status.value and "settings must be exactly" in dashboard.status.value
    assert dashboard.run(GOOD | dict(colour="red")) is None
    # issue 13: an empty dict silently ran with the widgets' values
    assert dashboard.run({}) is None
    assert "Not run" in dashboard.status.value and "settings must be exactly" in dashboard.status.value
    assert dashboard.run(["draft_len"]) is None and "settings must be a dict" in dashboard.status.value


def test_run_writes_status_and_plot_into_widgets(dashboard):
    draft_before = [p.clone() for p in dashboard.pair.draft.parameters()]
    decoder = dashboard.run(GOOD)
    assert len(decoder.history["alpha"]) == 6 and len(decoder.history["updates"]) == 3
    assert dashboard.status.value.startswith("query 6/6") and "autoregressive" in dashboard.status.value
    assert dashboard.plot.value[:4] == b"\x89PNG"
    # the dashboard distils a copy: the pair's draft is untouched
    assert all((a == b).all() for a, b in zip(draft_before, dashboard.pair.draft.parameters()))


def test_widget_values_feed_the_run(dashboard):
    dashboard.controls["queries"].value = 3
    dashboard.controls["draft_len"].value = 2
    assert dashboard.settings()["queries"] == 3
    dashboard.button.click()
    assert dashboard.status.value.startswith("query 3/3")
