"""`bincli split`: stratified, deterministic, leak-free, and honest about what it leaves out."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import SplitConfig
from bincli.data.split import run_split
from bincli.errors import DataError, StateError
from bincli.state import State
from helpers import make_abid_folder, make_bin_image, write_metadata

runner = CliRunner()


def _rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    make_abid_folder(root, {0: 3, 1: 21, 2: 13, 3: 10, 4: 7, 5: 5, 7: 4})
    return root


def test_ratios_per_class_within_one_image_and_no_leaks(data, tmp_path):
    out = run_split(SplitConfig(input=data, ratios=(0.7, 0.2, 0.1), classes="1-5"), tmp_path / "w")
    rows = {s: _rows(out["manifests"][s]) for s in ("train", "valid", "test")}
    per_class = {c: n for c, n in {1: 21, 2: 13, 3: 10, 4: 7, 5: 5}.items()}
    for count, n in per_class.items():
        for split, ratio in zip(("train", "valid", "test"), (0.7, 0.2, 0.1), strict=True):
            got = sum(1 for r in rows[split] if int(r["count"]) == count)
            assert abs(got - n * ratio) < 1, (count, split, got)
    ids = [r["id"] for split in rows.values() for r in split]
    assert len(ids) == len(set(ids)) == sum(per_class.values())
    assert {int(r["count"]) for split in rows.values() for r in split} == {1, 2, 3, 4, 5}
    assert out["outside_classes"] == 7  # 3 empty bins + 4 bins of 7


def test_manifest_format_paths_and_zero_padded_ids(data, tmp_path):
    out = run_split(SplitConfig(input=data), tmp_path / "w")
    text = Path(out["manifests"]["train"]).read_text()
    assert text.splitlines()[0] == "id,path,count"
    row = _rows(out["manifests"]["train"])[0]
    assert len(row["id"]) == 5 and row["id"].startswith("0")
    assert row["path"] == f"images/{row['id']}.jpg" and (data / row["path"]).is_file()


def test_same_inputs_and_seed_give_identical_bytes(data, tmp_path):
    a = run_split(SplitConfig(input=data, seed=5), tmp_path / "a")
    b = run_split(SplitConfig(input=data, seed=5), tmp_path / "b")
    c = run_split(SplitConfig(input=data, seed=6), tmp_path / "c")
    for s in ("train", "valid", "test"):
        assert Path(a["manifests"][s]).read_bytes() == Path(b["manifests"][s]).read_bytes()
    assert Path(a["manifests"]["train"]).read_bytes() != Path(c["manifests"]["train"]).read_bytes()


def test_rerun_in_same_workdir_is_safe_and_identical(data, tmp_path):
    first = run_split(SplitConfig(input=data, layout="folders"), tmp_path / "w")
    before = Path(first["manifests"]["valid"]).read_bytes()
    second = run_split(SplitConfig(input=data, layout="folders"), tmp_path / "w")
    assert Path(second["manifests"]["valid"]).read_bytes() == before
    assert not list((tmp_path / "w" / "splits").glob(".*"))  # no temp files left behind


def test_open_top_class_buckets_large_counts(data, tmp_path):
    out = run_split(SplitConfig(input=data, classes="0-5+"), tmp_path / "w")
    counts = [int(r["count"]) for s in ("train", "valid", "test") for r in _rows(out["manifests"][s])]
    assert counts.count(5) == 5 + 4  # the four 7-item bins land in class 5+
    assert counts.count(0) == 3 and out["outside_classes"] == 0
    assert [row["class"] for row in out["table"]][-1] == "5+"


def test_max_per_class_caps_each_class(data, tmp_path):
    out = run_split(SplitConfig(input=data, max_per_class=6), tmp_path / "w")
    total = {row["class"]: row["train"] + row["valid"] + row["test"] for row in out["table"]}
    assert total == {"1": 6, "2": 6, "3": 6, "4": 6, "5": 5}


def test_corrupt_truncated_non_jpeg_and_duplicates_are_reported(data, tmp_path):
    images = data / "images"
    truncated = images / "00010.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (images / "00011.jpg").write_bytes(b"this is not an image")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "00012.jpg", format="PNG")  # a PNG named .jpg
    shutil.copy(images / "00004.jpg", images / "00099.jpg")  # same bytes as 00004
    write_metadata(data / "metadata" / "00099.json", 1)
    (data / "metadata" / "00013.json").write_text("{not json")
    make_bin_image(images / "00500.jpg", 2)  # image without metadata
    write_metadata(data / "metadata" / "00501.json", 2)  # metadata without image

    out = run_split(SplitConfig(input=data), tmp_path / "w")
    reasons = {r["id"]: r["reason"] for r in out["rejected_ids"]}
    assert reasons["00010"].startswith("corrupt image")
    assert reasons["00011"] == "not an image"
    assert reasons["00012"] == "not a JPEG (PNG)"
    assert reasons["00099"] == "duplicate of 00004"
    assert reasons["00013"].startswith("metadata is not valid JSON")
    assert reasons["00500"] == "image without metadata"
    assert reasons["00501"] == "metadata without image"
    listed = {r["id"] for s in ("train", "valid", "test") for r in _rows(out["manifests"][s])}
    assert not listed & set(reasons)
    report = json.loads(Path(out["report"]).read_text())
    assert {r["id"] for r in report["rejected"]} == set(reasons)


def test_folder_layout_uses_hard_links(data, tmp_path):
    out = run_split(SplitConfig(input=data, layout="folders"), tmp_path / "w")
    row = _rows(out["manifests"]["train"])[0]
    linked = Path(out["folders"]) / "train" / row["count"] / f"{row['id']}.jpg"
    assert linked.stat().st_ino == (data / row["path"]).stat().st_ino


def test_state_records_outputs_and_reads_download(data, tmp_path):
    work = tmp_path / "w"
    with pytest.raises(StateError, match="run 'bincli download' first"):
        run_split(SplitConfig(), work)
    selection = ["00004", "00005", "00006", "00007", "00030", "00031"]  # classes 1 and 2 only
    (tmp_path / "ids.txt").write_text("\n".join(selection) + "\n")
    State(work).record("download", {"data_dir": str(data), "ids_file": str(tmp_path / "ids.txt")})
    out = run_split(SplitConfig(), work)
    listed = {r["id"] for s in ("train", "valid", "test") for r in _rows(out["manifests"][s])}
    assert listed == set(selection)  # only the last download's selection, not all of data/
    record = State(work).step("split")
    assert record["outputs"]["manifests"] == out["manifests"]
    assert record["outputs"]["data_root"] == str(data.resolve())
    assert record["config"]["ratios"] == [0.8, 0.1, 0.1]


def test_no_usable_class_is_a_clear_error(data, tmp_path):
    with pytest.raises(DataError, match="no image with a count in classes 10-12"):
        run_split(SplitConfig(input=data, classes="10-12"), tmp_path / "w")


def test_cli_split_json_and_table(data, tmp_path, in_tmp):
    result = runner.invoke(app, ["split", "-w", str(tmp_path / "w"), "--input", str(data),
                                 "--ratios", "0.8", "0.1", "0.1", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["train"] + out["valid"] + out["test"] == 56
    assert State(tmp_path / "w").step("split")["config"]["seed"] == 3


def test_cli_bad_ratios_exit_2_with_one_line(data, tmp_path, in_tmp):
    result = runner.invoke(app, ["split", "-w", str(tmp_path / "w"), "--input", str(data),
                                 "--ratios", "0.8", "0.1", "0.2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --ratios: split.ratios: must sum to 1.0, got 1.1"
    assert not (tmp_path / "w" / "splits").exists()


def test_cli_missing_input_folder(tmp_path, in_tmp):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["split", "-w", str(tmp_path / "w"), "--input", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "expected an ABID folder with images/ and metadata/" in result.stderr


def test_abid_sample_split(abid_sample, tmp_path):
    out = run_split(SplitConfig(input=abid_sample, classes="1-5"), tmp_path / "w")
    assert (out["train"], out["valid"], out["test"]) == (1025, 130, 125)
    assert out["rejected"] == 0
    assert out["outside_classes"] == 59 + 134


# ---------------------------------------------------------------- near-duplicates (issue 13)
def _near_pair(data: Path, ids: tuple[str, str], count: int) -> None:
    """Two photos of one bin: a seeded block pattern (unlike the generated noise bins, whose
    unseeded noise could sit near anything) and the same a little brighter, re-encoded."""
    import numpy as np
    from PIL import Image, ImageEnhance

    grid = np.random.default_rng(7).integers(40, 201, size=(6, 8)).astype(np.uint8)
    im = Image.fromarray(grid, "L").resize((64, 48), Image.Resampling.NEAREST).convert("RGB")
    im.save(data / "images" / f"{ids[0]}.jpg", quality=95)
    ImageEnhance.Brightness(im).enhance(1.15).save(data / "images" / f"{ids[1]}.jpg", quality=80)
    for id_ in ids:
        write_metadata(data / "metadata" / f"{id_}.json", count)


def _where(out: dict) -> dict[str, str]:
    return {r["id"]: s for s in ("train", "valid", "test") for r in _rows(out["manifests"][s])}


def _per_class(out: dict) -> dict[str, tuple[int, int, int]]:
    return {row["class"]: (row["train"], row["valid"], row["test"]) for row in out["table"]}


def test_near_duplicates_are_kept_in_one_split(data, tmp_path):
    _near_pair(data, ("00600", "00601"), 1)
    # A seed whose plain split puts the pair on two sides (found, not assumed).
    seed, plain = next((s, out) for s in range(40)
                       if (out := run_split(SplitConfig(input=data, seed=s, group_near_duplicates=False),
                                            tmp_path / f"plain-{s}"))
                       and len({_where(out)["00600"], _where(out)["00601"]}) == 2)
    assert plain["near_duplicates"] is None and "near_duplicates" not in json.loads(Path(plain["report"]).read_text())
    grouped = run_split(SplitConfig(input=data, seed=seed), tmp_path / "grouped")
    where = _where(grouped)
    assert where["00600"] == where["00601"]
    assert grouped["near_duplicates"] == {"groups": 1, "groups_moved": 1, "images_moved": 1, "unbalanced": 0}
    assert json.loads(Path(grouped["report"]).read_text())["near_duplicates"] == grouped["near_duplicates"]
    # Stratification holds: one ungrouped photo of the same class went the other way.
    assert _per_class(grouped) == _per_class(plain)
    assert sum(1 for i in where if where[i] != _where(plain)[i]) == 2
    # Same inputs and seed: the same bytes.
    again = run_split(SplitConfig(input=data, seed=seed), tmp_path / "again")
    for s in ("train", "valid", "test"):
        assert Path(again["manifests"][s]).read_bytes() == Path(grouped["manifests"][s]).read_bytes()


def test_keep_groups_together_across_classes_and_when_no_swap_is_left():
    from bincli.core.classes import ClassSpec
    from bincli.data.split import Item, keep_groups_together

    def item(id_, count):
        return Item(id_, f"images/{id_}.jpg", count)

    splits = {"train": [item("a", 1), item("b", 2), item("c", 2)], "valid": [item("d", 1)],
              "test": [item("e", 2)]}
    # {a, d, e}: each side holds one member and train wins ties; e (class 2) swaps with c
    # (c: b is grouped, even if its partner is not in this split); d (class 1) finds no ungrouped
    # class-1 photo in train: unbalanced.
    out, stats = keep_groups_together(splits, [["a", "d", "e"], ["b", "x"]], ClassSpec.parse("1-5"), seed=0)
    ids = {name: [it.id for it in items] for name, items in out.items()}
    assert {"a", "d", "e"} <= set(ids["train"])
    assert stats == {"groups": 1, "groups_moved": 1, "images_moved": 2, "unbalanced": 1}
    assert ids == {"train": ["a", "b", "d", "e"], "valid": [], "test": ["c"]}


def test_cli_split_no_group_flag(data, tmp_path, in_tmp):
    result = runner.invoke(app, ["split", "-w", str(tmp_path / "w"), "--input", str(data),
                                 "--no-group-near-duplicates", "--json"])
    assert result.exit_code == 0, result.output
    assert State(tmp_path / "w").step("split")["config"]["group_near_duplicates"] is False
    assert json.loads(result.stdout)["near_duplicates"] is None


def _naive_keep_groups_together(splits, groups, spec, seed):
    """The rule as first written (a scan of every photo per move): the reference for the fast one."""
    import random as _random

    from bincli.core.contract import SPLITS as _SPLITS

    where = {it.id: name for name, items in splits.items() for it in items}
    item_of = {it.id: it for items in splits.values() for it in items}
    grouped = {i for g in groups for i in g}
    rng = _random.Random(seed)
    for group in groups:
        members = [i for i in group if i in where]
        sides = {where[i] for i in members}
        if len(sides) < 2:
            continue
        counts = {n: sum(where[i] == n for i in members) for n in _SPLITS}
        target = max(_SPLITS, key=lambda n: (counts[n], -_SPLITS.index(n)))
        for id_ in members:
            source = where[id_]
            if source == target:
                continue
            where[id_] = target
            cls = spec.bucket(item_of[id_].count)
            swap = sorted(j for j, n in where.items() if n == target and j not in grouped
                          and spec.bucket(item_of[j].count) == cls)
            if swap:
                where[rng.choice(swap)] = source
    return {name: sorted(i for i, n in where.items() if n == name) for name in _SPLITS}


def test_keep_groups_together_moves_exactly_as_the_plain_rule_does():
    """The per-(split, class) lists that replaced a scan per move choose the same swaps."""
    import random as _random

    from bincli.core.classes import ClassSpec
    from bincli.data.split import Item, assign, keep_groups_together

    rng = _random.Random(7)
    items = [Item(f"{k:05d}", f"images/{k:05d}.jpg", rng.randint(1, 5)) for k in range(600)]
    spec = ClassSpec.parse("1-5")
    splits, _ = assign(items, spec, (0.8, 0.1, 0.1), 3, None)
    ids = [it.id for it in items]
    groups = [sorted(rng.sample(ids, rng.randint(2, 4))) for _ in range(60)]
    groups = [g for k, g in enumerate(groups) if not set(g) & {i for h in groups[:k] for i in h}]
    out, stats = keep_groups_together(splits, groups, spec, seed=3)
    assert stats["groups_moved"] > 10
    assert {n: [it.id for it in v] for n, v in out.items()} == _naive_keep_groups_together(splits, groups, spec, 3)
