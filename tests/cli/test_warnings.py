"""Warnings on the command line: one ``warning:`` line per message, however often it is raised."""

from __future__ import annotations

import warnings

from ser_pipeline.cli.common import _once_per_message


def test_a_repeated_warning_is_shown_once_and_others_still_show() -> None:
    shown: list[str] = []
    show = _once_per_message(lambda message, *args, **kwargs: shown.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # Python's own registry would not dedupe across call sites
        warnings.showwarning = show
        for _ in range(3):
            warnings.warn("alexnet: from-scratch variant", UserWarning, stacklevel=1)
        warnings.warn("res_trans: stage 2 fine-tunes", UserWarning, stacklevel=1)
    assert shown == ["alexnet: from-scratch variant", "res_trans: stage 2 fine-tunes"]
    assert _once_per_message(show).once_per_message is True
