"""Tests of vae_helpers.progress: the bar chosen by $VAE_PROGRESS."""

from __future__ import annotations

import pytest
from tqdm import tqdm as std_tqdm

from vae_helpers.progress import ENV, progress_bar, progress_mode

pytestmark = pytest.mark.unit


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert progress_mode() == "auto"
    bar = progress_bar(10, "x", "it")
    assert isinstance(bar, std_tqdm)
    bar.close()


def test_off_gives_no_bar(monkeypatch):
    monkeypatch.setenv(ENV, "off")
    assert progress_bar(10, "x", "it") is None


def test_text_bar_is_plain_and_slow_to_redraw(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "Text")
    bar = progress_bar(4, "training", "step")
    assert bar.mininterval == 10.0 and bar.ascii
    bar.update(4)
    bar.close()
    err = capsys.readouterr().err
    assert "training" in err and "4/4" in err


def test_unknown_mode_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv(ENV, "widgets")
    with pytest.raises(ValueError, match="VAE_PROGRESS='widgets' is not one of auto, text, off"):
        progress_bar(1, "x", "it")
