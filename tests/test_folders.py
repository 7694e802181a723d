"""Outputs replaced whole (``lungjax.folders``) and written under their folder's lock (``runtime.workdir.writing``):
the swap never leaves a moment without the output where the OS can exchange two names, a file in the
way is refused, and what stopped writers left is removed by the next writer."""

import errno
import os
import threading
import types

import pytest

from lungjax import folders, locking
from lungjax.runtime import workdir as workdir_lib


def folder_with(path, name, text):
    path.mkdir()
    (path / name).write_text(text)
    return path


def test_swap_in_exchanges_a_folder_without_a_moment_where_there_is_none(tmp_path, monkeypatch):
    """The old ``swap_in`` renamed the old folder away, then the new one in: between the two, a reader
    (serve loading a bundle, export reading a report) found nothing."""
    final = folder_with(tmp_path / "6", "model.jax", "old")
    draft = folder_with(folders.draft_of(final), "model.jax", "new")
    renames = []
    real_rename = os.rename

    def watched_rename(source, target):
        renames.append(final.is_dir())  # whether the output existed at each rename
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", watched_rename)
    folders.swap_in(draft, final)
    assert all(renames), "a rename left no output in place"
    assert (final / "model.jax").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["6"]  # the old one is deleted


def test_swap_in_puts_a_first_output_in_place_and_replaces_files(tmp_path):
    final, draft = tmp_path / "test", folders.draft_of(tmp_path / "test")
    folder_with(draft, "report.json", "{}")
    folders.swap_in(draft, final)
    assert (final / "report.json").read_text() == "{}" and not draft.exists()
    table = tmp_path / "predictions.csv"
    table.write_text("old")
    folders.draft_of(table).write_text("new")
    folders.swap_in(folders.draft_of(table), table)
    assert table.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "test"]


def refusing_libc():
    """A libc whose ``renameat2`` fails (-1; the test sets the errno a refusing filesystem answers)."""

    def renameat2(*args):
        return -1

    return types.SimpleNamespace(renameat2=renameat2)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS])
def test_swap_in_falls_back_to_two_renames_where_the_exchange_is_refused(tmp_path, monkeypatch, code):
    monkeypatch.setattr(folders.ctypes, "CDLL", lambda *args, **kwargs: refusing_libc())
    monkeypatch.setattr(folders.ctypes, "get_errno", lambda: code)
    final = folder_with(tmp_path / "6", "model.jax", "old")
    draft = folder_with(folders.draft_of(final), "model.jax", "new")
    assert folders._exchange(draft, final) is False
    folders.swap_in(draft, final)
    assert (final / "model.jax").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["6"]


def test_an_exchange_that_fails_otherwise_raises_naming_the_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such file or directory: '.*/absent' -> '.*/6'"):
        folders._exchange(tmp_path / "absent", folder_with(tmp_path / "6", "model.jax", ""))


def test_writing_removes_what_stopped_writers_left_and_nothing_else(tmp_path, caplog):
    export = tmp_path / "export"
    export.mkdir()
    kept = {"6", "lock.json.note", ".lock.json.99", ".unrelated"}
    for name in ("6", ".unrelated"):
        folder_with(export / name, "model.jax", "kept")
    for name in ("lock.json.note", ".lock.json.99"):
        (export / name).write_text("kept")
    for name in (".6.123", ".4.77", ".6.old.123"):  # drafts and a set-aside bundle of killed exports
        folder_with(export / name, "model.jax", "half")
    with workdir_lib.writing(export / "8", is_output=str.isdigit) as draft:
        assert draft == export / f".8.{os.getpid()}" and (export / workdir_lib.LOCK_FILE).is_file()
        (draft / "model.jax").write_text("new")
    assert {p.name for p in export.iterdir()} - {".lock.json.guard"} == kept | {"8"}
    assert (export / "8" / "model.jax").read_text() == "new"
    assert "removed" in caplog.text and ".6.old.123" in caplog.text


def test_writing_that_fails_leaves_the_old_output_and_no_draft(tmp_path):
    (tmp_path / "eval").mkdir()
    final = folder_with(tmp_path / "eval" / "test", "report.json", "old")
    with pytest.raises(RuntimeError, match="stopped"), workdir_lib.writing(final, is_output=str.isalpha) as draft:
        (draft / "report.json").write_text("half")
        raise RuntimeError("stopped")
    assert (final / "report.json").read_text() == "old"
    assert {p.name for p in final.parent.iterdir()} <= {"test", ".lock.json.guard"}


@pytest.mark.parametrize("in_the_way", ["eval", "eval/test"])
def test_a_file_where_an_output_folder_goes_is_refused_and_kept(tmp_path, in_the_way):
    (tmp_path / "eval").mkdir()
    if in_the_way == "eval":
        (tmp_path / "eval").rmdir()
    (tmp_path / in_the_way).write_text("a file of the user's")
    message = rf"{tmp_path / in_the_way} is a file, not a folder: move it away, then run again \(nothing was written\)"
    with pytest.raises(workdir_lib.WorkdirError, match=message):
        workdir_lib.check_output(tmp_path / "eval" / "test")
    with pytest.raises(workdir_lib.WorkdirError, match=message):
        with workdir_lib.writing(tmp_path / "eval" / "test", is_output=str.isalpha):
            pass
    assert (tmp_path / in_the_way).read_text() == "a file of the user's"


def test_a_second_writer_waits_for_the_first(tmp_path, monkeypatch):
    """Two writers of one output folder serialise on its lock: the second is told, waits, then writes."""
    monkeypatch.setattr(locking, "POLL_SECONDS", 0.01)
    told = []
    monkeypatch.setattr(workdir_lib, "_say_waiting", lambda held: told.append(held.owner["pid"]))
    finished = []

    def second_writer():
        with workdir_lib.writing(tmp_path / "eval" / "test", is_output=str.isalpha) as draft:
            (draft / "report.json").write_text("second")
        finished.append(True)

    with workdir_lib.writing(tmp_path / "eval" / "test", is_output=str.isalpha) as draft:
        (draft / "report.json").write_text("first")
        thread = threading.Thread(target=second_writer)
        thread.start()
        while not told:
            thread.join(0.01)
        assert not finished and not (tmp_path / "eval" / "test").exists()
    thread.join()
    assert told == [os.getpid()] and finished
    assert (tmp_path / "eval" / "test" / "report.json").read_text() == "second"
