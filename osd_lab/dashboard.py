"""An ipywidgets dashboard for the online speculative decoder (core widgets only).

Controls for draft length, update interval, temperature, loss, stream and
number of queries; a Run button; a live plot of alpha over queries and a
status line with the speedup over autoregressive decoding. Callbacks only
write into widgets (``Image.value``, ``HTML.value``), never ``print``, and
``Dashboard.run`` is a plain method that tests call directly.
Taught in ``notebooks/07_dashboard``.
"""

import copy
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt

from osd_lab.checks import check_choice, check_float, check_int
from osd_lab.decoding import autoregressive_generate
from osd_lab.divergences import DIVERGENCES
from osd_lab.online import STREAMS, OnlineSpeculativeDecoder, make_stream
from osd_lab.plots import plot_alpha

LIMITS = dict(draft_len=(1, 16), update_interval=(1, 64), temperature=(0.0, 2.0),
              queries=(1, 1000))


def check_settings(draft_len, update_interval, temperature, loss, stream, queries):
    """Raise ``ValueError`` naming the first setting out of range."""
    for name, value in (("draft_len", draft_len), ("update_interval", update_interval),
                        ("queries", queries)):
        check_int(name, value, *LIMITS[name])
    check_float("temperature", temperature, *LIMITS["temperature"])
    check_choice("loss", loss, DIVERGENCES)
    check_choice("stream", stream, STREAMS)


def render_png(history, title):
    """The alpha-over-queries plot of ``history`` as PNG bytes."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    plot_alpha(history, ax, title=title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


class Dashboard:
    """Widgets around one online run on a copy of ``pair.draft`` (the pair is untouched)."""

    def __init__(self, pair, prompts_by_domain, max_new_tokens=24, redraw_every=10):
        check_int("max_new_tokens", max_new_tokens, low=2)  # with 1, nothing is drafted
        check_int("redraw_every", redraw_every, low=1)
        self.pair, self.prompts = pair, prompts_by_domain
        self.max_new_tokens, self.redraw_every = max_new_tokens, redraw_every
        self.controls = dict(
            draft_len=widgets.IntSlider(4, *LIMITS["draft_len"], description="draft len"),
            update_interval=widgets.IntSlider(4, *LIMITS["update_interval"],
                                              description="update every"),
            temperature=widgets.FloatSlider(0.0, min=0.0, max=2.0, step=0.1,
                                            description="temperature"),
            loss=widgets.Dropdown(options=DIVERGENCES, value="fkl", description="loss"),
            stream=widgets.Dropdown(options=STREAMS, value="sharp", description="stream"),
            queries=widgets.IntSlider(60, *LIMITS["queries"], description="queries"))
        self.button = widgets.Button(description="Run", button_style="primary")
        self.button.on_click(lambda _: self.run())
        self.status = widgets.HTML("Choose settings and press Run.")
        self.plot = widgets.Image(format="png")
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(list(self.controls.values())[:3]),
                                                  widgets.VBox(list(self.controls.values())[3:])]),
                                    self.button, self.status, self.plot])
        # stable CSS classes (osd-draft-len, osd-run, ...) for browser tests and styling
        for name, part in dict(self.controls, run=self.button, status=self.status,
                                 plot=self.plot, dashboard=self.widget).items():
            part.add_class("osd-" + name.replace("_", "-"))

    def settings(self):
        return {name: control.value for name, control in self.controls.items()}

    def autoregressive_rate(self, prompts):
        """Target-only tokens/s on a few prompts, the baseline for the speedup."""
        tokens = seconds = 0
        for text in prompts:
            ids = self.pair.tokenizer(text, return_tensors="pt").input_ids
            out = autoregressive_generate(self.pair.target, ids, self.max_new_tokens)
            tokens, seconds = tokens + len(out.tokens), seconds + out.stats["wall_time_s"]
        return tokens / seconds

    def run(self, settings=None):
        """Run one online session with ``settings``, a dict with every key of
        ``self.settings()``; None (only None) means the widgets' values."""
        if settings is None:
            settings = self.settings()
        try:
            names = set(LIMITS) | {"loss", "stream"}
            if not isinstance(settings, dict):
                raise ValueError(f"settings must be a dict {{name: value}}, got {settings!r}")
            if set(settings) != names:
                raise ValueError(f"settings must be exactly {sorted(names)}, "
                                 f"got {sorted(settings)}")
            check_settings(**settings)
        except ValueError as err:
            self.status.value = f"<b>Not run:</b> {err}"
            return None
        stream = make_stream(settings["stream"], self.prompts, settings["queries"])
        baseline = self.autoregressive_rate([p for _, p in stream[:4]])
        decoder = OnlineSpeculativeDecoder(
            self.pair.target, copy.deepcopy(self.pair.draft), self.pair.tokenizer,
            draft_len=settings["draft_len"], update_interval=settings["update_interval"],
            loss=settings["loss"], temperature=settings["temperature"],
            max_new_tokens=self.max_new_tokens, vocab_size=self.pair.vocab_size)
        h = decoder.history
        for i, (domain, prompt) in enumerate(stream, start=1):
            decoder.serve(prompt, domain)
            if i % self.redraw_every == 0 or i == len(stream):
                rate = sum(h["new_tokens"]) / sum(h["latency_s"])
                self.status.value = (f"query {i}/{len(stream)}: mean alpha "
                                     f"{sum(h['alpha']) / i:.3f}, {rate:.0f} tokens/s = "
                                     f"{rate / baseline:.2f}x autoregressive "
                                     f"({baseline:.0f} tokens/s), {len(h['updates'])} updates")
                self.plot.value = render_png(h, f"{settings['stream']} stream, "
                                                f"{settings['loss']}, draft_len "
                                                f"{settings['draft_len']}, temperature "
                                                f"{settings['temperature']:g}")
        return decoder
