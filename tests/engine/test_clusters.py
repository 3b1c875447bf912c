"""Cluster set-up details that are not a whole pipeline run."""

from __future__ import annotations

import platform

import pytest

from engine.clusters import keep_freed_memory


def test_keep_freed_memory_is_applied_on_glibc_and_off_by_none() -> None:
    assert keep_freed_memory(None) is False
    assert keep_freed_memory(0) is False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory(256 * 2**20) is True
    assert keep_freed_memory(128 * 2**10) is True  # glibc's default again
