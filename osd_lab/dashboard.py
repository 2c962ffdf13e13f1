"""An ipywidgets dashboard for the online speculative decoder (core widgets only).

Controls for the decoding (draft length, draft-length policy, temperature),
the learning (update interval, buffer size, learning rate, loss, AdaSPEC keep
fraction) and the stream (kind, number of queries); a Run button, disabled
while a run goes on; a progress bar; a status line with served tokens/s
(decoding + updates) against plain decoding of the same queries; and two
live panels side by side, alpha and tokens/s over the queries.

Callbacks only write into widgets (``Image.value``, ``HTML.value``), never
``print``, and ``Dashboard.run`` is a plain method that tests call directly.
Timing is the decoder's own (``baseline=True``, read by
``osd_lab.evaluation.served_speed``). Taught in ``notebooks/07_dashboard``.
"""

import copy
import io
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt

from osd_lab.checks import check_choice, check_float, check_int
from osd_lab.divergences import DIVERGENCES
from osd_lab.evaluation import served_speed
from osd_lab.measure import measure_costs
from osd_lab.online import DEFAULTS as ONLINE
from osd_lab.online import (STREAMS, OnlineSpeculativeDecoder, default_update_interval,
                            make_stream)
from osd_lab.plots import domain_shifts, plot_alpha, plot_speed
from osd_lab.policies import DRAFT_LEN_POLICIES

LR_EXPONENTS = (-5, -2)  # the lr slider's range, as powers of 10
LIMITS = dict(draft_len=(1, 16), update_interval=(1, 64), temperature=(0.0, 2.0),
              queries=(1, 1000), buffer_size=(8, 512),
              lr=(10.0 ** LR_EXPONENTS[0], 10.0 ** LR_EXPONENTS[1]),  # as FloatLogSlider
              keep_fraction=(0.0, 1.0))  # 0: off (plain distillation)
CHOICES = dict(loss=DIVERGENCES, stream=STREAMS, draft_len_policy=DRAFT_LEN_POLICIES)
# the decoder's own defaults (osd_lab.online.DEFAULTS), except draft_len: 4 leaves the
# slider room to move (goodput's own default, 16, is its top); lr: default_lr of the zoo's
# draft; update_interval None: a Dashboard's slider starts at the decoder's interval for the
# update mode it will run in on this machine (Dashboard.defaults)
DEFAULTS = dict(draft_len=4,
                update_interval=ONLINE.update_interval, temperature=0.0, loss=ONLINE.loss,
                stream="sharp", queries=60, buffer_size=ONLINE.buffer_size, lr=1e-3,
                keep_fraction=0.0, draft_len_policy=ONLINE.draft_len_policy)
MAX_WINDOW = 20  # queries in a moving average, at most
# ipywidgets cuts a label at 80 px ("update ev..."): room for the longest, same for all
LABEL_WIDTH, CONTROL_WIDTH = "13em", "29em"


def check_settings(draft_len, update_interval, temperature, loss, stream, queries,
                   buffer_size=DEFAULTS["buffer_size"], lr=DEFAULTS["lr"],
                   keep_fraction=DEFAULTS["keep_fraction"],
                   draft_len_policy=DEFAULTS["draft_len_policy"]):
    """Raise ``ValueError`` naming the first setting out of range and what is allowed."""
    for name, value in (("draft_len", draft_len), ("update_interval", update_interval),
                        ("queries", queries), ("buffer_size", buffer_size)):
        check_int(name, value, *LIMITS[name])
    check_float("temperature", temperature, *LIMITS["temperature"])
    check_float("lr", lr, *LIMITS["lr"])
    check_float("keep_fraction (0: off, else AdaSPEC's k)", keep_fraction,
                *LIMITS["keep_fraction"])
    for name, value in (("loss", loss), ("stream", stream),
                        ("draft_len_policy", draft_len_policy)):
        check_choice(name, value, CHOICES[name])


def moving_window(stream_kind, domains):
    """Queries per moving average: at most ``MAX_WINDOW``, and in a sharp
    stream no longer than its shortest domain block, so that an average never
    straddles a shift. (Smooth and iid streams mix domains query by query:
    there is no block to stay inside.)"""
    if stream_kind != "sharp":
        return min(MAX_WINDOW, len(domains))
    starts = [i for i, _ in domain_shifts(domains)] + [len(domains)]
    return min(MAX_WINDOW, *(b - a for a, b in zip(starts, starts[1:])))


def render_png(history, title, window=MAX_WINDOW):
    """Two panels as PNG bytes: alpha over queries | served vs plain tokens/s."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.4))
    plot_alpha(history, left, window=window, title=title)
    plot_speed(history, right, window=window)
    right.set_title("tokens/s: served (updates counted) vs plain decoding")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def status_line(history, done, total):
    """The status after ``done`` of ``total`` queries."""
    speed = served_speed(history)
    alphas = [a for a in history["alpha"] if not math.isnan(a)]  # NaN: nothing drafted
    alpha = f"{sum(alphas) / len(alphas):.3f}" if alphas else "n/a (nothing drafted)"
    return (f"query {done}/{total}: served {speed['served_tps']:.0f} tokens/s (updates "
            f"{speed['update_share']:.0%} of the time) vs plain decoding "
            f"{speed['baseline_tps']:.0f} tokens/s = <b>{speed['speedup']:.2f}x</b>; "
            f"mean alpha {alpha}, {len(history['updates'])} updates")


class Dashboard:
    """Widgets around one online run on a copy of ``pair.draft`` (the pair is untouched)."""

    def __init__(self, pair, prompts_by_domain, max_new_tokens=24, redraw_every=10):
        check_int("max_new_tokens", max_new_tokens, low=2)  # with 1, nothing is drafted
        check_int("redraw_every", redraw_every, low=1)
        self.pair, self.prompts = pair, prompts_by_domain
        self.max_new_tokens, self.redraw_every = max_new_tokens, redraw_every
        self.costs = None  # the pair's SpeculationCosts, measured at the first goodput run
        # every setting's starting value; the update interval the decoder would choose
        self.defaults = DEFAULTS | dict(update_interval=default_update_interval())
        d = self.defaults
        self.controls = dict(
            draft_len=widgets.IntSlider(d["draft_len"], *LIMITS["draft_len"],
                                        description="draft len"),
            draft_len_policy=widgets.Dropdown(options=DRAFT_LEN_POLICIES,
                                              value=d["draft_len_policy"],
                                              description="policy"),
            temperature=widgets.FloatSlider(value=d["temperature"], min=0.0, max=2.0,
                                            step=0.1, description="temperature"),
            stream=widgets.Dropdown(options=STREAMS, value=d["stream"], description="stream"),
            queries=widgets.IntSlider(d["queries"], *LIMITS["queries"], description="queries"),
            update_interval=widgets.IntSlider(d["update_interval"], *LIMITS["update_interval"],
                                              description="update every"),
            buffer_size=widgets.IntSlider(d["buffer_size"], *LIMITS["buffer_size"], step=8,
                                          description="buffer size"),
            lr=widgets.FloatLogSlider(value=d["lr"], base=10, min=LR_EXPONENTS[0],
                                      max=LR_EXPONENTS[1], step=0.25, description="lr"),
            loss=widgets.Dropdown(options=DIVERGENCES, value=d["loss"], description="loss"),
            keep_fraction=widgets.FloatSlider(value=d["keep_fraction"], min=0.0, max=1.0,
                                              step=0.05, description="AdaSPEC keep (0 = off)"))
        for control in self.controls.values():  # every label in full, the controls aligned
            control.style.description_width = LABEL_WIDTH
            control.layout.width = CONTROL_WIDTH
        self.button = widgets.Button(description="Run", button_style="primary")
        self.button.on_click(lambda _: self.run())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.status = widgets.HTML("Choose settings and press Run.")
        self.plot = widgets.Image(format="png")
        parts = list(self.controls.values())  # decoding and stream | learning
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(parts[:5]),
                                                  widgets.VBox(parts[5:])]),
                                    widgets.HBox([self.button, self.progress]),
                                    self.status, self.plot])
        # stable CSS classes (osd-draft-len, osd-run, ...) for browser tests and styling
        for name, part in dict(self.controls, run=self.button, progress=self.progress,
                               status=self.status, plot=self.plot,
                               dashboard=self.widget).items():
            part.add_class("osd-" + name.replace("_", "-"))

    def settings(self):
        return {name: control.value for name, control in self.controls.items()}

    def run(self, settings=None):
        """Run one online session with ``settings``, a dict with every key of
        ``self.settings()``; None (only None) means the widgets' values.
        Returns the decoder (its ``history`` holds every query), or None
        when a setting is bad (the status line says which)."""
        if settings is None:
            settings = self.settings()
        try:
            if not isinstance(settings, dict):
                raise ValueError(f"settings must be a dict {{name: value}}, got {settings!r}")
            if set(settings) != set(self.controls):
                raise ValueError(f"settings must be exactly {sorted(self.controls)}, "
                                 f"got {sorted(settings)}")
            check_settings(**settings)
        except ValueError as err:
            self.status.value = f"<b>Not run:</b> {err}"
            return None
        self.button.disabled = True  # one run at a time; the finally re-enables it
        try:
            return self._serve(settings)
        finally:
            self.button.disabled = False

    def _serve(self, s):
        """Serve the stream of settings ``s``, redrawing every ``redraw_every`` queries."""
        stream = make_stream(s["stream"], self.prompts, s["queries"])
        window = moving_window(s["stream"], [domain for domain, _ in stream])
        if s["draft_len_policy"] == "goodput" and self.costs is None:
            self.status.value = "measuring the pair's costs for the goodput policy..."
            self.costs = measure_costs(self.pair.target, self.pair.draft)
        decoder = OnlineSpeculativeDecoder(
            self.pair.target, copy.deepcopy(self.pair.draft), self.pair.tokenizer,
            draft_len=s["draft_len"], draft_len_policy=s["draft_len_policy"],
            costs=self.costs if s["draft_len_policy"] == "goodput" else None,
            update_interval=s["update_interval"], buffer_size=s["buffer_size"], lr=s["lr"],
            loss=s["loss"], keep_fraction=s["keep_fraction"] or None,
            temperature=s["temperature"], max_new_tokens=self.max_new_tokens,
            vocab_size=self.pair.vocab_size, baseline=True)
        title = (f"{s['stream']} stream, {s['draft_len_policy']} policy, draft_len "
                 f"{s['draft_len']}, T={s['temperature']:g}")
        self.progress.max, self.progress.value = len(stream), 0
        for i, (domain, prompt) in enumerate(stream, start=1):
            decoder.serve(prompt, domain)
            self.progress.value = i
            if i % self.redraw_every == 0 and i < len(stream):
                self.status.value = status_line(decoder.history, i, len(stream))
                self.plot.value = render_png(decoder.history, title, window)
        decoder.close()  # background updates: the last ones finish (and count), the thread stops
        self.status.value = status_line(decoder.history, len(stream), len(stream))
        self.plot.value = render_png(decoder.history, title, window)
        return decoder
