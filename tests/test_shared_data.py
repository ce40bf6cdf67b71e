"""Tests that need ../shared/data fail under CI when it is missing."""

import pytest

import conftest


def test_missing_shared_data_fails_under_ci(tmp_path, monkeypatch):
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match="CI must provide"):
    conftest.shared_or_standin(str(tmp_path / "nope"))


def test_missing_shared_data_builds_a_standin_outside_ci(tmp_path,
                                                         monkeypatch):
  monkeypatch.delenv("CI", raising=False)
  assert conftest.shared_or_standin(str(tmp_path / "nope")) is False
  assert conftest.shared_or_standin(str(tmp_path)) is True


def test_standins_have_the_real_counts(tmp_path):
  # The same numbers the reader tests assert on the real data.
  conftest._write_visa_csv(str(tmp_path / "1cls.csv"))  # pylint: disable=protected-access
  text = (tmp_path / "1cls.csv").read_text()
  assert text.count("\nfryum,train,normal,") == 450
  assert text.count("\nfryum,test,anomaly,") == 100
  assert sum(conftest.MAGNETIC_TILE_COUNTS.values()) == 761 + 191 + 392
