"""Atomic writes into a model repository (training/publish.py), on a real file system.

Fast and exporter-free: the tests ``make mutate`` runs against training/publish.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

import pytest

from model_repository.layout import STAGING_PREFIX
from training import publish


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def assert_file_exists(error: OSError, target: Path, code: int = errno.EEXIST) -> None:
    """The error names the taken target, with the errno and its text."""
    assert isinstance(error, FileExistsError)
    assert (error.errno, error.strerror, error.filename) == (code, os.strerror(code), str(target))


def test_first_version_is_1_complete_and_readable_by_others(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "mlp"  # created on the way
    target = publish.publish_version(model_dir, {"model.onnx": b"graph", "metrics.json": b"{}"})
    assert target == model_dir / "1"
    assert entries(model_dir) == ["1"]  # no staging directory left behind
    assert entries(target) == ["metrics.json", "model.onnx"]
    assert (target / "model.onnx").read_bytes() == b"graph"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_publish_moves_on_when_the_version_number_was_taken_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "mlp"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"first writer")
    numbers = iter([1])  # a writer that looked before version 1 appeared
    real = publish.next_version
    monkeypatch.setattr(publish, "next_version", lambda d: next(numbers, None) or real(d))
    with caplog.at_level("INFO", logger="training.publish"):
        target = publish.publish_version(model_dir, {"model.onnx": b"second writer"})
    assert target == model_dir / "2"
    assert caplog.messages == [
        f"version {model_dir / '1'} was taken by another writer; trying the next"
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"first writer"
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"second writer"
    assert entries(model_dir) == ["1", "2"]


def test_publish_gives_up_after_100_taken_numbers_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "mlp"
    (model_dir / "1").mkdir(parents=True)
    tries = []
    monkeypatch.setattr(publish, "next_version", lambda d: tries.append(d) or 1)
    with pytest.raises(FileExistsError, match="no free version number after 100 attempts") as e:
        publish.publish_version(model_dir, {"model.onnx": b"x"})
    assert (e.value.errno, e.value.filename) == (errno.EEXIST, str(model_dir))
    assert len(tries) == 100
    assert entries(model_dir) == ["1"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_publish_leaves_no_version_and_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    model_dir = tmp_path / "mlp"
    written = []

    def write(path: Path, data: bytes) -> None:
        if written:
            raise failure
        written.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(publish, "write_synced", write)
    with pytest.raises(type(failure)):
        publish.publish_version(model_dir, {"a": b"1", "b": b"2"})
    staging = written[0].parent  # staged beside the versions: same file system, atomic rename
    assert staging.parent == model_dir and staging.name.startswith(STAGING_PREFIX)
    assert entries(model_dir) == []


def test_rename_noreplace_renames_and_refuses_existing_targets(tmp_path: Path) -> None:
    (tmp_path / "staged").mkdir()
    publish.rename_noreplace(tmp_path / "staged", tmp_path / "3")
    assert entries(tmp_path) == ["3"]
    (tmp_path / "staged").mkdir()
    (tmp_path / "file").write_bytes(b"kept")
    for taken in ("3", "file"):  # an empty directory and a file are both refused
        with pytest.raises(FileExistsError) as caught:
            publish.rename_noreplace(tmp_path / "staged", tmp_path / taken)
        assert_file_exists(caught.value, tmp_path / taken)
    assert (tmp_path / "file").read_bytes() == b"kept"
    assert entries(tmp_path) == ["3", "file", "staged"]


def test_rename_noreplace_reports_other_errors_as_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        publish.rename_noreplace(tmp_path / "missing", tmp_path / "3")
    assert not isinstance(caught.value, FileExistsError)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.strerror == os.strerror(errno.ENOENT)
    assert caught.value.filename == str(tmp_path / "missing")


def failing_renameat2(code: int):
    """A renameat2 that fails with ``code`` (EINVAL: file system without the flag)."""

    def function(*args: object) -> int:
        assert args[0] == args[2] == -100 and args[4] == 1  # AT_FDCWD, RENAME_NOREPLACE
        ctypes.set_errno(code)
        return -1

    return lambda: function


@pytest.mark.parametrize("renameat2", [lambda: None, failing_renameat2(errno.EINVAL)])
def test_the_fallback_rename_also_refuses_existing_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2
) -> None:
    monkeypatch.setattr(publish, "_renameat2", renameat2)
    (tmp_path / "staged").mkdir()
    (tmp_path / "3").mkdir()
    with pytest.raises(FileExistsError) as caught:
        publish.rename_noreplace(tmp_path / "staged", tmp_path / "3")
    assert_file_exists(caught.value, tmp_path / "3")
    publish.rename_noreplace(tmp_path / "staged", tmp_path / "4")
    assert entries(tmp_path) == ["3", "4"]


def test_renameat2_failures_other_than_einval_are_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "_renameat2", failing_renameat2(errno.EACCES))
    (tmp_path / "staged").mkdir()
    with pytest.raises(PermissionError) as caught:
        publish.rename_noreplace(tmp_path / "staged", tmp_path / "4")
    assert caught.value.errno == errno.EACCES
    assert caught.value.strerror == os.strerror(errno.EACCES)
    assert caught.value.filename == str(tmp_path / "staged")
    monkeypatch.setattr(publish, "_renameat2", failing_renameat2(errno.EEXIST))
    with pytest.raises(FileExistsError) as taken:
        publish.rename_noreplace(tmp_path / "staged", tmp_path / "4")
    assert_file_exists(taken.value, tmp_path / "4")
    assert entries(tmp_path) == ["staged"]


def test_the_fallback_turns_a_lost_race_into_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer fills the target between the check and rename(2)."""
    monkeypatch.setattr(publish, "_renameat2", lambda: None)
    monkeypatch.setattr(publish.os.path, "lexists", lambda path: False)
    (tmp_path / "staged").mkdir()
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "model.onnx").write_bytes(b"theirs")
    with pytest.raises(FileExistsError) as caught:
        publish.rename_noreplace(tmp_path / "staged", tmp_path / "3")
    assert caught.value.errno in (errno.EEXIST, errno.ENOTEMPTY)
    assert_file_exists(caught.value, tmp_path / "3", caught.value.errno)
    with pytest.raises(OSError) as missing:
        publish.rename_noreplace(tmp_path / "gone", tmp_path / "5")
    assert not isinstance(missing.value, FileExistsError)


def test_the_c_library_renameat2_is_found_with_its_signature() -> None:
    function = publish._renameat2()
    assert function is not None  # glibc on Linux
    assert function.restype is ctypes.c_int
    assert function.argtypes == [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]


def test_create_file_atomically_writes_once_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    publish.create_file_atomically(path, b"name: 'mlp'")
    assert path.read_bytes() == b"name: 'mlp'"
    with pytest.raises(FileExistsError):
        publish.create_file_atomically(path, b"name: 'other'")
    assert path.read_bytes() == b"name: 'mlp'"
    assert entries(tmp_path) == ["config.pbtxt"]  # no temporary file left


def test_write_synced_creates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    publish.write_synced(tmp_path / "a", b"data")
    assert (tmp_path / "a").read_bytes() == b"data"
    with pytest.raises(FileExistsError):
        publish.write_synced(tmp_path / "a", b"other")


def test_fsync_directory_needs_a_directory(tmp_path: Path) -> None:
    publish.fsync_directory(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        publish.fsync_directory(tmp_path / "f")
    assert os.listdir(tmp_path) == ["f"]
