"""app.hugepages: the process re-runs itself once with glibc's huge-page tunable for malloc,
unless the environment already decided; and a real server runs with it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app import hugepages


def test_the_tunable_is_added_to_what_is_there() -> None:
    assert hugepages.with_tunable({"A": "1"}) == {
        "A": "1",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    }
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env is not None
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_a_value_already_chosen_is_left_alone() -> None:
    assert hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


def test_nothing_to_do_once_the_tunable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert hugepages.reexec_argv_env() is None


def test_no_huge_pages_when_the_kernel_has_them_off(tmp_path: Path) -> None:
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    assert not hugepages._thp_available(never)
    never.write_text("always [madvise] never\n")
    assert hugepages._thp_available(never)
    assert not hugepages._thp_available(tmp_path / "missing")


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_the_plan_reruns_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    plan = hugepages.reexec_argv_env()
    if plan is None:  # no glibc >= 2.35 or THP off here: nothing would be done
        pytest.skip("huge pages for malloc are not available on this machine")
    argv, env = plan
    assert argv == [sys.executable, *sys.orig_argv[1:]]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
