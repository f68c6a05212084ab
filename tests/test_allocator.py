"""edgeqwen.allocator.page_out: the resident pages of a mapped weights file go back, its bytes do not change."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_PAGEOUT) is Linux's")


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
            inside = len(head) == 6 and head[5] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_page_out_gives_back_a_mapped_files_pages_and_keeps_its_bytes(tmp_path):
    from edgeqwen.allocator import page_out

    data = tmp_path / "weights" / "model.onnx.data"
    data.parent.mkdir()
    payload = bytes(range(256)) * (32 * 1024 * 1024 // 256)  # 32 MB
    data.write_bytes(payload)
    other = tmp_path / "elsewhere.bin"
    other.write_bytes(payload[: 8 * 1024 * 1024])
    with open(data, "rb") as f, open(other, "rb") as g:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert m[:] == payload and n[:] == payload[: 8 * 1024 * 1024]  # every page touched
            before, before_other = _resident_kb(data), _resident_kb(other)
            assert before >= 30 * 1024
            assert page_out(str(data.parent)) >= len(payload)
            after = _resident_kb(data)
            assert after < before / 4, (before, after)
            assert _resident_kb(other) == before_other  # only files under the folder
            assert m[:] == payload  # read back from the page cache, unchanged
        finally:
            m.close()
            n.close()
    assert page_out(str(tmp_path / "nothing-mapped-here")) == 0
