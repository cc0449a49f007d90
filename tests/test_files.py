"""Files that appear whole or not at all (:mod:`srlib.files`), under real faults."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from srlib.files import PARTIAL, replacing, write_atomic

ROOT = Path(__file__).resolve().parents[1]

#: A write past the file-size limit fails with EFBIG, as a full disk fails with ENOSPC
FULL = """
import resource, signal, sys
sys.path.insert(0, {root!r})
from srlib.files import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
try:
    write_atomic(sys.argv[1], b"new " * 4096)
except OSError as err:
    print(err.errno)
"""


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{PARTIAL}"))


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    import errno

    target = tmp_path / "manifest.json"
    target.write_text("old")
    proc = subprocess.run([sys.executable, "-c", FULL.format(root=str(ROOT)), str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(errno.EFBIG)  # the write did fail, midway
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_block_that_raises_replaces_nothing(tmp_path):
    target = tmp_path / "quicklook.png"
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the renderer failed")
    assert not target.exists() and _leftovers(tmp_path) == []
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".quicklook.png.")
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and _leftovers(tmp_path) == []


def test_writers_of_one_name_at_once_leave_one_whole_file(tmp_path):
    target = tmp_path / "marker.json"
    bodies = [bytes([65 + k]) * (1 << 20) for k in range(8)]
    start = threading.Barrier(len(bodies))

    def write(body: bytes) -> None:
        start.wait()
        for _ in range(5):
            write_atomic(target, body)

    threads = [threading.Thread(target=write, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in bodies  # one writer's whole file, never a mix
    assert _leftovers(tmp_path) == []


def test_text_is_written_as_utf8(tmp_path):
    path = write_atomic(tmp_path / "item.json", '{"title": "São Tomé"}')
    assert path == tmp_path / "item.json"
    assert path.read_bytes() == '{"title": "São Tomé"}'.encode()
