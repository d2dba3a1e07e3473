"""Every output is checked before any work: unwritable locations, files where folders go and the reverse are one
clear error, and nothing is created."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from erasekit.errors import OutputExistsError, OutputPathError
from erasekit.io import check_output

NOBODY = 65534


def test_an_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "edit.safetensors").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(tmp_path / "edit.safetensors", overwrite=False)
    assert check_output(tmp_path / "edit.safetensors", overwrite=True) == tmp_path / "edit.safetensors"


def test_a_file_where_a_folder_goes_and_the_reverse_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputPathError, match="must be a folder, but a file is there"):
        check_output(tmp_path / "file", overwrite=True, folder=True)
    with pytest.raises(OutputPathError, match="must be a file, but a folder is there"):
        check_output(tmp_path / "folder", overwrite=True)
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "sub" / "edit.safetensors", overwrite=False)


def test_missing_parents_are_fine_and_not_created(tmp_path):
    target = tmp_path / "a" / "b" / "edit.safetensors"
    assert check_output(target, overwrite=False) == target
    assert not (tmp_path / "a").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def shared_dir():
    """A folder other users can reach (pytest's tmp_path is owner-only)."""
    folder = Path(tempfile.mkdtemp(prefix="erasekit-test-"))
    folder.chmod(0o755)
    yield folder
    for item in folder.rglob("*"):
        item.chmod(0o755)
    shutil.rmtree(folder)


def check_as_unprivileged(target: Path) -> str:
    """``check_output(target)``'s error as an unprivileged user: root may write anywhere, so under root a forked child
    drops to ``nobody`` first (erasekit is already imported, so it needs no interpreter that user could run)."""
    read, write = os.pipe()
    pid = os.fork() if os.geteuid() == 0 else None
    if pid == 0:  # the child: become nobody, report, exit without running pytest's teardown
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check_output(target, overwrite=False)
            message = "no error"
        except Exception as exc:
            message = f"{type(exc).__name__} {exc}"
        os.write(write, message.encode())
        os._exit(0)
    if pid is None:
        try:
            check_output(target, overwrite=False)
            return "no error"
        except OutputPathError as exc:
            return f"OutputPathError {exc}"
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        return pipe.read()


def test_a_read_only_location_is_refused_for_an_unprivileged_user(shared_dir):
    locked = shared_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = check_as_unprivileged(locked / "out" / "edit.safetensors")
    assert out.startswith("OutputPathError") and "is not writable" in out, out
    assert list(locked.iterdir()) == []
