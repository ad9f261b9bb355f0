"""Bad adapter options are user errors: exit 2 with one ``error:`` line, before any work starts."""

from __future__ import annotations

import pytest

from ser_pipeline.cli import main
from ser_pipeline.corpora import check_entry_options
from ser_pipeline.errors import ConfigError


def run_main(args, capsys):
    with pytest.raises(SystemExit) as code:
        main(args)
    err = capsys.readouterr().err
    return code.value.code, err


def test_unknown_option_of_ingest_exits_2(tmp_path, capsys):
    code, err = run_main(["ingest", "casia", str(tmp_path), "--root", str(tmp_path / "r"), "-o", "workerz=2"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: option=['workerz']: unknown for adapter 'casia'")
    assert "min_duration" in err and "workers" in err


def test_unknown_option_in_a_run_config_exits_2_before_prefect(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: bad\ncorpora:\n  - {name: c, adapter: casia, path: /nowhere, options: {workerz: 2}}\n"
                      "models:\n  - name: cnn\n")
    code, err = run_main(["run", str(config), "--root", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and "corpora[c]" in err and "workerz" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.parquet"))


def test_demo_entry_options_are_the_generator_keywords():
    check_entry_options("demo", {"per_class": 2, "n_speakers": 2})
    with pytest.raises(ConfigError, match=r"unknown for the demo corpus; valid: \['classes', 'n_speakers', 'per_class', 'sample_rate'\]"):
        check_entry_options("demo", {"speakers": 2})
    with pytest.raises(ConfigError, match="min_duration"):
        check_entry_options("casia", {"min_duration": "abc"})
