"""The shared world experiment protocol: which rows judge a task, what is preserved, how the table reads."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.errors import ConfigError
from erasekit.world.experiments import (
    ERASABLE,
    RETAINED,
    TASKS,
    _preserve,
    _write_rows,
    get_task,
    markdown_table,
    run_label,
)


def _rows(task: str, tmp_path) -> list[dict[str, str]]:
    with open(_write_rows(get_task(task), tmp_path / "rows.csv"), encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_character_tasks_judge_erased_and_retained_characters_only(tmp_path):
    rows = _rows("characters-10", tmp_path)
    concepts = {r["concept"] for r in rows}
    assert concepts == set(ERASABLE[:10]) | set(RETAINED)
    assert len(rows) == 5 * 30  # five held-out seeds per character


def test_scene_task_keeps_only_scenes_with_a_target():
    task = get_task("scene-local")
    erased = {c["text"] for concepts in task.edits for c in concepts}
    assert task.keep_rows({"concept": "church+fish"}, erased)
    assert not task.keep_rows({"concept": "fish+boat"}, erased)


def test_objects_10_is_ten_single_object_edits():
    edits = TASKS["objects-10"].edits
    assert len(edits) == 10 and all(len(e) == 1 for e in edits)


def test_neighbours_exclude_the_erased_concepts_and_none_preserves_nothing():
    task = get_task("characters-10")
    erased = task.edits[0]
    kept = _preserve(task, erased, "neighbours")
    assert kept == list(ERASABLE[10:]) and not set(kept) & set(RETAINED)
    assert _preserve(task, erased, "none") == []
    with pytest.raises(ConfigError, match="preserve"):
        _preserve(task, erased, "all")


def test_unknown_task_and_distinct_labels():
    with pytest.raises(ConfigError, match="unknown world task"):
        get_task("characters-7")
    assert run_label("uce", None, "none") == "uce-none"
    assert run_label("uce", {"lamb": 1}, "none") != run_label("uce", {"lamb": 2}, "none")


def test_markdown_table_lists_base_then_methods_in_percent():
    summary = {
        "task": "characters-10",
        "label": "uce-none",
        "base": {"erase": 1.0, "retain": 1.0, "H_c": 0.0},
        "edited": {"erase": 0.1, "retain": 0.8, "H_c": 0.847},
        "fit_seconds_per_edit": 0.5,
    }
    lines = markdown_table([summary]).splitlines()
    assert lines[0] == "| method | Acc_e | Acc_s | H_c | fit s/edit |"
    assert lines[2] == "| unedited | 100.0 | 100.0 | 0.0 |  |"
    assert lines[3] == "| uce-none | 10.0 | 80.0 | 84.7 | 0.5 |"


def test_bench_cli_lists_tasks_and_rejects_bad_params():
    runner = CliRunner()
    listed = runner.invoke(app, ["world", "bench", "--list"])
    assert listed.exit_code == 0 and "scene-local" in listed.output
    bad = runner.invoke(app, ["world", "bench", "--task", "object", "--params", "{oops"])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output
