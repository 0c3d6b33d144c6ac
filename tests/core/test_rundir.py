"""--overwrite deletes only what muselab recorded writing; a folder muselab did not make is never deleted."""

import json
import shutil

import pytest

from conftest import run_cli
from muselab import api
from muselab.core.errors import RunExistsError
from muselab.core.registry import recipe_names
from muselab.core.rundir import MARKER, RunDir
from muselab.demo import DemoFolder, run_demo


def entries(folder):
    return json.loads((folder / MARKER).read_text())["entries"]


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def train_args(data, out, *extra):
    return ["train", "text-lm", "--data", str(data), "--out", str(out), "--preset", "tiny", "--max-steps", "3",
            "--quiet", *extra]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def project(tmp_path):
    """A user's own folder that happens to hold a config.json."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "my project"}')
    (folder / "notes.txt").write_text("my notes")
    return folder


# -- the record, function by function ---------------------------------------------------------------
def test_a_new_run_records_what_it_writes_and_nothing_else(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(overwrite=False)
    assert entries(run.path) == []
    run.write_json("config.json", {})
    (run / "samples" / "a.txt").parent.mkdir()
    run.append_metrics({"step": 1})
    with run.writing():
        (run.path / "tokenizer.json").write_text("{}")
    assert entries(run.path) == ["config.json", "metrics.jsonl", "samples", "tokenizer.json"]


def test_overwrite_removes_only_recorded_entries(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(overwrite=False)
    run.write_json("config.json", {})
    (run / "progress").mkdir()
    (run.path / "progress" / "step_000010.png").write_bytes(b"png")
    (run.path / "notes.txt").write_text("mine")  # the user adds a file to the run

    with pytest.raises(RunExistsError, match="already holds a run.*--overwrite"):
        RunDir(run.path).claim(overwrite=False)
    again = RunDir(run.path)
    again.claim(overwrite=True)
    assert listing(run.path) == [MARKER, "notes.txt"] and entries(run.path) == []


def test_a_folder_muselab_did_not_make_is_never_deleted(project):
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match="muselab did not make") as err:
            RunDir(project).claim(overwrite)
        assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_a_marker_never_reaches_outside_its_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "link").symlink_to(target)
    (run / MARKER).write_text(json.dumps({"entries": ["..", "../outside.txt", str(outside), "/", "link", ""]}))
    RunDir(run).claim(overwrite=True)
    assert outside.read_text() == "keep" and (target / "kept.txt").read_text() == "keep"
    assert listing(run) == [MARKER]  # the link itself was muselab's, its target was not


def test_a_damaged_marker_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("{not json")
    (run / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RunExistsError, match="damaged"):
        RunDir(run).claim(overwrite=True)
    assert listing(run) == [MARKER, "model.safetensors"]


def test_loading_a_run_records_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _ = RunDir(run) / "eval.json"
    assert listing(run) == []  # no marker appears in a run only read (it may be read-only)


def test_the_demo_folder_follows_the_same_rule(tmp_path, project):
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    with pytest.raises(RunExistsError, match="muselab did not make"):
        run_demo(project, preset="tiny", overwrite=True)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before

    old_demo = tmp_path / "old-demo"  # from before the marker
    old_demo.mkdir()
    (old_demo / "report.html").write_text("<html>")
    with pytest.raises(RunExistsError, match="older muselab.*by hand"):
        DemoFolder(old_demo).claim(overwrite=True)
    assert listing(old_demo) == ["report.html"]

    demo = DemoFolder(tmp_path / "demo")
    demo.claim(overwrite=False)
    (demo / "text-lm").mkdir()
    (demo.path / "text-lm" / "config.json").write_text("{}")
    (demo / "report.html").write_text("<html>")
    (demo.path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="already holds a demo"):
        DemoFolder(demo.path).claim(overwrite=False)
    DemoFolder(demo.path).claim(overwrite=True)
    assert listing(demo.path) == [".muselab-demo.json", "notes.txt"]


# -- through the command line -----------------------------------------------------------------------
def test_train_and_demo_overwrite_refuse_a_users_folder(project, corpus_file):
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    assert_one_line_error(run_cli(*train_args(corpus_file, project, "--overwrite")),
                          str(project), "muselab did not make", "even with --overwrite")
    assert_one_line_error(run_cli("demo", "--preset", "tiny", "--out", str(project), "--overwrite"),
                          "muselab did not make")
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_overwrite_replaces_a_run_cleanly_and_keeps_the_users_file(tmp_path, corpus_file):
    out = tmp_path / "run"
    first = run_cli("train", "image-gan", "--out", str(out), "--preset", "tiny", "--max-steps", "3", "--quiet")
    assert first.returncode == 0, first.stderr
    assert (out / "progress").is_dir()  # a picture per validation: not part of a text run
    (out / "notes.txt").write_text("mine")

    second = run_cli(*train_args(corpus_file, out, "--overwrite"))
    assert second.returncode == 0, second.stderr
    assert not (out / "progress").exists() and not (out / "image_data.json").exists()
    assert json.loads((out / "config.json").read_text())["recipe"] == "text-lm"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(set(listing(out)) - {MARKER, "notes.txt"}) == entries(out)


def test_resume_keeps_the_record_and_leaves_the_users_file_out(tmp_path, corpus_file):
    out = tmp_path / "run"
    assert run_cli(*train_args(corpus_file, out)).returncode == 0
    (out / "notes.txt").write_text("mine")
    (out / "loss.png").unlink()  # written again at the end of the resumed run
    before = entries(out)
    resumed = run_cli(*train_args(corpus_file, out, "--max-steps", "6", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert entries(out) == before and "notes.txt" not in entries(out) and (out / "loss.png").is_file()
    assert run_cli(*train_args(corpus_file, out, "--overwrite")).returncode == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_a_run_from_before_the_record_still_works_but_is_not_overwritten(tiny_run, tmp_path, corpus_file):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / MARKER).unlink()
    before = listing(old)
    assert_one_line_error(run_cli(*train_args(corpus_file, old, "--overwrite")),
                          "older muselab", "delete or move it by hand")
    assert listing(old) == before
    assert run_cli("generate", str(old), "--max-new-tokens", "5").returncode == 0
    resumed = run_cli("train", "--out", str(old), "--resume", "--max-steps", "33", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not (old / MARKER).exists()  # listing only the newest files would make --overwrite half-delete it


def test_generate_overwrite_keeps_a_users_other_files(tiny_run, tmp_path):
    out = tmp_path / "texts"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sample_005.txt").write_text("an older sample of mine")
    args = ("generate", str(tiny_run), "--num-samples", "2", "--max-new-tokens", "5", "--out", str(out))
    assert run_cli(*args).returncode == 0
    assert run_cli(*args, "--overwrite", "--seed", "3").returncode == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sample_005.txt").read_text() == "an older sample of mine"
    assert (out / "sample_000.txt").is_file() and (out / "sample_001.txt.json").is_file()


# -- every recipe records every file it writes ------------------------------------------------------
SLOW = {"audio-ddsp", "text-seq2seq", "image-gan"}


@pytest.mark.parametrize("recipe", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
                                    for name in recipe_names()])
def test_every_file_a_recipe_writes_is_recorded(recipe, tmp_path):
    out = tmp_path / "run"
    api.train(recipe, None, out, preset="tiny", max_steps=3, quiet=True)
    api.load(out).evaluate()
    assert entries(out) == sorted(set(listing(out)) - {MARKER})
