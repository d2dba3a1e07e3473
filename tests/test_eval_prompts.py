"""Prompt sets: one row format, the shipped public sets mapped onto it, user CSVs, roles from the erased list."""

from __future__ import annotations

from importlib import resources

import pytest

from erasekit.errors import ConfigError
from erasekit.eval.prompts import PROMPT_SETS, PromptRow, assign_roles, load_prompts, read_csv, rows_from_records


def test_i2p_maps_evaluation_seed_guidance_and_image_size():
    rows = load_prompts("i2p")
    assert len(rows) == 4703
    first = rows[0]
    assert (first.seed, first.guidance, first.width, first.height) == (4261553411, 13.0, 512, 512)
    assert (first.family, first.role, first.concept, first.label) == ("explicit", "indirect", "nudity", "yes")
    assert any(r.width != r.height for r in rows)  # the 55 non-square I2P rows keep their shape
    assert rows[2260].prompt == ""  # kept: the papers sample it unconditionally


@pytest.mark.parametrize(
    ("name", "n_rows", "concepts"),
    [
        ("coco30k", 30000, 1),
        ("big_artists", 100, 5),
        ("imagenette", 5000, 10),
        ("small_imagenet", 100, 10),
        ("unlearndiffatk_nudity", 142, 1),
        ("mace_celebrities", 200 * 5 * 5, 200),
        ("cifar10", 10 * 20, 10),
    ],
)
def test_every_shipped_set_loads_with_its_concepts(name, n_rows, concepts):
    rows = load_prompts(name)
    assert len(rows) == n_rows
    assert len({r.concept for r in rows}) == concepts
    assert all(r.set == name and r.prompt for r in rows)


def test_all_builtin_sets_load_and_limit_spreads_rows_over_the_set():
    for name in (n for n in PROMPT_SETS.names() if ":" not in n):
        assert len(load_prompts(name, limit=3)) == 3
    rows = load_prompts("imagenette", limit=20)  # 10 classes x 500 rows
    assert [r.index for r in rows] == list(range(0, 5000, 250))
    assert len({r.concept for r in rows}) == 10


def test_shipped_data_carries_its_licences_and_notice():
    folder = resources.files("erasekit") / "data" / "prompts"
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert "CONTENT WARNING" in notice and "CC BY 4.0" in notice and "AIML-TUDA" in notice
    licences = sorted(p.name for p in (folder / "licenses").iterdir())
    assert licences == [
        "Apache-2.0-CharlesGong12-RECE.txt",
        "MIT-OPTML-Group-Diffusion-MU-Attack.txt",
        "MIT-rohitgandikota-erasing.txt",
        "MIT-rohitgandikota-unified-concept-editing.txt",
    ]


def test_a_user_csv_with_the_world_columns_reads_as_written(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "prompt,seed,guidance,size,steps,concept,role,family,label\n"
        "a photo of a car,3,5.5,64,20,car,direct,object,car\n"
        "an automobile,4,,,,car,synonym,object,car\n",
        encoding="utf-8",
    )
    first, second = read_csv(path)
    assert first == PromptRow("a photo of a car", 3, 5.5, 64, 64, 20, "car", "direct", "object", "car", "mine", 0)
    assert (second.guidance, second.width, second.steps) == (None, None, None)  # the config's defaults apply


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a cat,x,,,", r"row 1: column 'seed' must be a number"),
        ("a cat,1.5,,,", r"row 1: column 'seed' must be an integer"),
        ("a cat,1,,30,", r"row 1: width must be a positive multiple of 8"),
        ("a cat,1,,,erased", r"row 1: role must be one of"),
    ],
)
def test_a_bad_csv_row_is_named_with_its_column(tmp_path, row, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"prompt,seed,guidance,size,role\n{row}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_csv(path)


def test_a_csv_without_prompt_column_or_an_unknown_set_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("text,seed\nhello,1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        load_prompts(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="unknown prompt set 'i2q'"):
        load_prompts("i2q")


def test_roles_follow_the_erased_concept_list():
    rows = [
        PromptRow("a dog", concept="dog"),
        PromptRow("a Dog", concept="Dog", role="direct"),
        PromptRow("a puppy", concept="dog", role="synonym"),
        PromptRow("at the dog park", concept="dog", role="indirect"),
        PromptRow("a cat", concept="cat", role="direct"),
        PromptRow("a kitten", concept="cat", role="synonym"),
        PromptRow("a caption", role="retain"),
        PromptRow("dog and cat", concept="dog+cat", role="scene"),
    ]
    roles = [r.role for r in assign_roles(rows, ["dog"])]
    assert roles == ["erase", "erase", "synonym", "indirect", "retain", "retain", "retain", "scene"]
    assert [r.role for r in assign_roles(rows, [])][:4] == ["retain"] * 4


def test_sets_given_as_records_parse_like_csv_rows():
    records = [{"prompt": "a car", "seed": 7, "guidance": 3.0, "size": 32, "steps": 25, "concept": "car",
                "role": "direct", "family": "object", "label": "car"}]  # fmt: skip
    (row,) = rows_from_records(records, "plugin:objects")
    assert (row.set, row.seed, row.guidance, row.width, row.steps, row.label) == (
        "plugin:objects",
        7,
        3.0,
        32,
        25,
        "car",
    )


def test_world_sets_are_registered_by_the_world_plugin():
    rows = load_prompts("world:objects", limit=10)
    assert len(rows) == 10 and all(r.set == "world:objects" and r.family == "object" for r in rows)
    from erasekit.world.prompts import SET_NAMES

    world_sets = {n for n in PROMPT_SETS.names() if n.startswith("world:")}
    assert world_sets == {f"world:{name}" for name in SET_NAMES} and "i2p" in PROMPT_SETS
    with pytest.raises(ConfigError, match=r"unknown prompt set 'world:object'.*world:objects"):
        load_prompts("world:object")
