"""Unwritable outputs are found before any work (the end-to-end case is in test_run_faults.py)."""

from __future__ import annotations

import pytest

from autoannotator.errors import UserError
from autoannotator.run.precheck import check_output_writable, check_run_dir_writable


@pytest.mark.parametrize("bad", ["/proc/aa-run", "FILE/sub"])
def test_run_dir_that_cannot_be_made(tmp_path, bad):
    (tmp_path / "FILE").write_text("x")
    path = tmp_path / "FILE" / "sub" if bad == "FILE/sub" else __import__("pathlib").Path(bad)
    with pytest.raises(UserError) as info:
        check_run_dir_writable(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_output_in_unwritable_places(tmp_path):
    (tmp_path / "FILE").write_text("x")
    for bad in (tmp_path / "FILE" / "out.csv", __import__("pathlib").Path("/proc/out.csv"), tmp_path):
        with pytest.raises(UserError):
            check_output_writable(bad)


def test_good_places_pass_and_leave_nothing(tmp_path):
    check_run_dir_writable(tmp_path / "new" / "run")
    check_output_writable(tmp_path / "o" / "out.csv")
    assert list((tmp_path / "new" / "run").iterdir()) == [] and list((tmp_path / "o").iterdir()) == []
