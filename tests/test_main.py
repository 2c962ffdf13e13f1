"""The main job (``python -m osd_lab``) end to end on a very short stream."""

import pytest

from osd_lab.__main__ import main


def test_main_job_prints_report_and_saves_plot(tmp_path, capsys):
    main(["--queries", "6", "--update-interval", "2", "--eval-prompts", "1",
          "--max-new-tokens", "6", "--keep-fraction", "0.4", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    for heading in ("| domain | alpha before | alpha after | change |",
                    "loss fkl (AdaSPEC, k=0.4)", "served alpha per domain", "speculative"):
        assert heading in report
    assert (tmp_path / "online_alpha_tau.png").stat().st_size > 0


@pytest.mark.parametrize("flags, message", [
    (["--queries", "0"], "num_queries"),
    (["--update-interval", "0"], "update_interval"),
    (["--buffer-size", "0"], "buffer_size"),
    (["--keep-fraction", "2"], "keep_fraction"),
    (["--eval-prompts", "0"], "eval-prompts"),
    (["--loss", "mse"], "invalid choice"),
])
def test_bad_flags_exit_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
