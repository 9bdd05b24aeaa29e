"""medtl.data.manifest: the manifest file, its paths and its data root (build.py and check.py have their own
test files; the `medtl manifest` command's round trip is here)."""

import os

import pytest

from medtl.cli import main
from medtl.data.manifest import Manifest, ManifestRow
from medtl.errors import MedtlError
from medtl.paths import resolve_inside


def test_roundtrip_keeps_extra_columns(tmp_path):
    rows = [ManifestRow("a.png", "x", "p1", "d", "train", "cxr", {"age": "41", "site": "s"})]
    m = Manifest(rows, ["x", "y"], {"seed": 3})
    m.save(tmp_path / "m.csv")
    back = Manifest.load(tmp_path / "m.csv")
    assert back.rows == rows and back.rows[0].extras == {"age": "41", "site": "s"}
    assert back.label_names == ["x", "y"] and back.meta["seed"] == 3


def test_missing_column_is_named(tmp_path, write_csv):
    path = write_csv(tmp_path / "m.csv", [{"path": "a", "label": "x"}], ["path", "label"])
    with pytest.raises(MedtlError, match="patient_id") as err:
        Manifest.load(path)
    assert "m.csv" in str(err.value)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.png", "a/../../b.png", "C:/x.png"])
def test_paths_escaping_the_root_are_refused(tmp_path, bad):
    with pytest.raises(MedtlError, match="data root"):
        resolve_inside(tmp_path, bad)


def test_hostile_manifest_files_get_a_medtl_error_naming_the_file(tmp_path, write_csv, folder_root, monkeypatch):
    """A security review: a NUL byte in a path, a field over csv's limit, a broken or deeply nested .meta.json
    and a decompression-bomb picture each ended in a raw traceback (ValueError, csv.Error, JSONDecodeError,
    RecursionError, PIL's DecompressionBombError)."""
    import PIL.Image

    from medtl.data import io

    with pytest.raises(MedtlError, match="NUL character"):
        resolve_inside(tmp_path, "imgs/a.png\x00.png")
    row = {"path": "a.png", "label": "x", "patient_id": "", "domain": "", "split": "train", "modality": "cxr"}
    big = write_csv(tmp_path / "big.csv", [row, dict(row, path="a" * 200_000)])
    with pytest.raises(MedtlError, match="not a readable CSV: field larger than field limit") as err:
        Manifest.load(big)
    assert str(big) in str(err.value)
    ok = write_csv(tmp_path / "ok.csv", [row])
    for text, why in (("{", "not valid JSON"), ("[" * 100_000, "nested too deeply"), ("[1]", "JSON object")):
        (tmp_path / "ok.meta.json").write_text(text)
        with pytest.raises(MedtlError, match=why) as err:
            Manifest.load(ok)
        assert "ok.meta.json" in str(err.value)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10)  # a 64 x 64 picture is then over twice the limit
    with pytest.raises(MedtlError, match="refused to decode: Image size") as err:
        io.read(folder_root / "site" / "neg" / "img00.png")
    assert "img00.png" in str(err.value)


def test_symlink_out_of_root_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(MedtlError, match="outside"):
        resolve_inside(root, "link.png")


def test_cli_build_and_check(folder_root, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(out), "--seed", "2"]) == 0
    assert main(["manifest", "check", str(out), "--data-root", str(folder_root)]) == 0
    printed = capsys.readouterr().out
    assert "OK" in printed and "label" in printed and "total" in printed
    # --out as a folder, as for every other command: DIR/manifest.csv beside its meta
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(tmp_path / "built"), "--seed", "2"]) == 0
    assert (tmp_path / "built" / "manifest.csv").read_text() == out.read_text()
    assert (tmp_path / "built" / "manifest.meta.json").exists()


def test_default_data_root_env_then_beside_cwd_then_beside_checkout(tmp_path, monkeypatch):
    from pathlib import Path

    import medtl.paths as paths

    monkeypatch.setenv(paths.DATA_ROOT_ENV, str(tmp_path / "mine"))
    assert paths.default_data_root() == tmp_path / "mine"
    monkeypatch.delenv(paths.DATA_ROOT_ENV)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # ../shared/data exists here: it wins
    assert paths.default_data_root().resolve() == (tmp_path / "shared" / "data").resolve()
    (tmp_path / "work" / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "work" / "notebooks")  # no ../shared/data from a notebook folder
    checkout = Path(paths.__file__).resolve().parents[2] / "shared" / "data"
    expected = checkout if checkout.is_dir() else Path("../shared/data")
    assert paths.default_data_root() == expected


def test_a_manifest_shows_a_summary_not_its_rows(tmp_path):
    """A notebook cell that evaluates a manifest printed every row (230,000 characters for cxr_nih)."""
    rows = [ManifestRow(f"{i}.png", "xy"[i % 2], f"p{i}", "d", ("train", "train", "test")[i % 3], "cxr")
            for i in range(600)]
    m = Manifest(rows, ["x", "y"])
    assert repr(m) == "Manifest(manifest: 600 rows (test 200, train 400), labels ['x', 'y'], modality cxr)"
    assert "m.csv: 600 rows" in repr(Manifest.load(m.save(tmp_path / "m.csv")))


def test_a_regression_target_is_a_finite_number():
    from medtl.data.manifest import is_number

    assert [is_number(x) for x in ("41.5", "7", "-0.2", "1e3")] == [True] * 4
    assert [is_number(x) for x in ("F", "nan", "inf", "-Infinity", "", "unlabelled")] == [False] * 6


def test_a_folder_of_links_to_images_elsewhere_says_where_they_point_and_what_to_do(folder_root, tmp_path, capsys):
    """Each linked file said only 'resolves outside the data root' (researcher review): the error names the
    link's target, and the build says once which --data-root reads them; a root above both builds."""
    links = tmp_path / "links" / "pos"
    links.mkdir(parents=True)
    for f in sorted((folder_root / "site" / "pos").glob("*.png"))[:2]:
        (links / f.name).symlink_to(f)
    assert main(["manifest", "build", "--from", str(tmp_path / "links"), "--data-root", str(tmp_path / "links"),
                 "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert f"(a link to {folder_root.resolve() / 'site' / 'pos'}" in err
    assert err.count("give a --data-root that holds the files the links point to") == 1
    common = os.path.commonpath([tmp_path / "links", folder_root.resolve()])  # a folder above both
    assert main(["manifest", "build", "--from", str(tmp_path / "links"), "--data-root", common,
                 "--out", str(tmp_path / "m.csv")]) == 0


def test_a_bad_row_is_named_by_its_line_in_the_file_also_after_a_selection(tmp_path, write_csv):
    """A security review: medtl train named the manifest of a '..' path but not its row; the row number the
    dataset gave was its index in the selected split, not its line in the file."""
    from medtl.data.datasets import manifest_items

    row = {"path": "a.png", "label": "x", "patient_id": "", "domain": "", "split": "train", "modality": "cxr"}
    path = write_csv(tmp_path / "m.csv", [row, dict(row, path="b.png"), dict(row, path="../c.png", split="test")])
    test = Manifest.load(path).select(split="test")
    with pytest.raises(MedtlError, match="contains '..'") as err:
        manifest_items(test, tmp_path)
    assert err.value.where.endswith("m.csv:4")
