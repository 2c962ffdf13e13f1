"""The main job (``python -m osd_lab``) end to end on a very short stream."""

import dataclasses
import inspect
import os

import pytest

from osd_lab.__main__ import main


def test_main_job_prints_report_and_saves_plot(tmp_path, capsys):
    main(["--queries", "6", "--update-interval", "2", "--eval-prompts", "1",
          "--max-new-tokens", "6", "--keep-fraction", "0.4", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    for heading in ("| domain | alpha before | alpha after | change |",
                    "loss fkl (AdaSPEC, k=0.4)", "served tokens/s (decoding + updates)",
                    "| whole stream |", "measured costs (goodput policy)"):
        assert heading in report
    assert (tmp_path / "online_alpha_speed.png").stat().st_size > 0


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="background updates need 2 cores")
def test_main_job_with_background_updates_reports_the_trainers_compute(tmp_path, capsys):
    main(["--queries", "4", "--update-interval", "1", "--eval-prompts", "1",
          "--max-new-tokens", "6", "--update-mode", "background", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    assert "updates background (trainer: " in report and "of the serving wall time" in report
    assert "0 trainer errors" in report


def test_the_decoder_the_main_job_and_the_dashboard_share_their_defaults(zoo):
    from osd_lab.__main__ import build_parser
    from osd_lab.dashboard import DEFAULTS as DASHBOARD, LIMITS
    from osd_lab.decoding import DEFAULT_DRAFT_LEN
    from osd_lab.finetune import default_lr
    from osd_lab.online import (DEFAULTS, UPDATE_INTERVAL, OnlineConfig,
                                OnlineSpeculativeDecoder, default_update_interval)
    assert inspect.signature(OnlineSpeculativeDecoder).parameters["config"].default is DEFAULTS
    assert DEFAULTS == OnlineConfig()
    flags = build_parser().parse_args([])
    for name, value in dataclasses.asdict(DEFAULTS).items():
        # --batch-size: queries served at once; --threads sets torch's count, which
        # the decoder's threads=None reads
        if hasattr(flags, name) and name not in ("batch_size", "threads"):
            assert getattr(flags, name) == value, name
    # the one exception (README): the draft_len slider starts below its top, which
    # is goodput's own default, so that it has room to move
    low, high = LIMITS["draft_len"]
    assert low <= DASHBOARD["draft_len"] < high == DEFAULT_DRAFT_LEN[DEFAULTS.draft_len_policy]
    for name in ("update_interval", "loss", "buffer_size", "draft_len_policy"):
        assert DASHBOARD[name] == getattr(DEFAULTS, name), name
    # update_interval None: by the mode the decoder runs in, for the decoder, the main
    # job's report and a Dashboard's slider alike (test_dashboard)
    assert DEFAULTS.update_interval is None and UPDATE_INTERVAL == dict(sync=4, background=1)
    for threads, mode in ((1, "sync"), (2, "background"))[:os.cpu_count() or 1]:
        decoder = OnlineSpeculativeDecoder(zoo.target, zoo.draft, zoo.tokenizer, threads=threads)
        assert (decoder.update_mode, decoder.update_interval) == (mode, UPDATE_INTERVAL[mode])
        assert default_update_interval(threads=threads) == UPDATE_INTERVAL[mode]
        decoder.close()
    assert DASHBOARD["lr"] == default_lr(zoo.draft)  # the slider needs a number


@pytest.mark.parametrize("flags, message", [
    (["--queries", "0"], "--queries must be an integer in [1, 10000], got 0"),
    (["--update-interval", "0"], "--update-interval"),
    (["--buffer-size", "0"], "--buffer-size"),
    (["--keep-fraction", "2"], "--keep-fraction"),
    (["--eval-prompts", "0"], "eval-prompts"),
    (["--loss", "mse"], "invalid choice"),
    # issue 13: each of these used to fail late, or with a traceback
    (["--queries", "1000000000"], "--queries must be an integer in [1, 10000]"),
    (["--max-new-tokens", "1"], "--max-new-tokens must be an integer >= 2, got 1"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
    (["--lr", "nan"], "--lr must be a finite number in (0, 1], got nan"),
    (["--lr", "inf"], "--lr must be a finite number in (0, 1], got inf"),
    (["--keep-fraction", "nan"], "--keep-fraction"),
    (["--draft-len", "0"], "--draft-len"),
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--threads", "4096"], "--threads must be an integer in [1, "),
    (["--update-mode", "background", "--threads", "1"],
     "--threads (with --update-mode background: half serve, half train) must be an integer in [2, "),
    (["--update-mode", "later"], "invalid choice"),
    (["--draft-len-policy", "fastest"], "invalid choice"),
    (["--stop-rule", "hunch"], "invalid choice"),
    (["--queries", "2.0"], "invalid int value"),
])
def test_bad_flags_exit_with_a_message(flags, message, capsys, monkeypatch):
    monkeypatch.setattr("osd_lab.__main__.load_pair", fail_if_called)
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def fail_if_called(*args, **kwargs):
    raise AssertionError("a bad flag must stop the job before it loads anything")


def test_out_must_be_a_writable_folder_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("osd_lab.__main__.load_pair", fail_if_called)
    a_file = tmp_path / "results.png"
    a_file.write_bytes(b"")
    for out, message in ((a_file, "--out must be a folder, got the file"),
                         (a_file / "plots", "--out must be a writable folder")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(out)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--eval-prompts", "81"], "--eval-prompts must be an integer in [1, 80], got 81"),
    (["--max-new-tokens", "500"], "--max-new-tokens must be an integer in [2, 437], got 500"),
])
def test_flags_that_depend_on_the_zoo(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(flags + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
