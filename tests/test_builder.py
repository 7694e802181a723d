"""The TFDS builder on small hand-made NIH-format trees: forms, images, boxes, bad input."""

import codecs
import errno
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lungjax.config.base import base_config
from lungjax.data import building, dataset, images, labels, metadata, nih, nih_layout, phantom, records

HEADER = nih_layout.DATA_ENTRY_HEADER
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Nodule",
    "Pneumothorax",
    "No Finding",
    "Mass",
    "Infiltration",
    "Atelectasis|Effusion",
)  # the last two are outside the subset


def film_name(patient: int, follow_up: int) -> str:
    return f"{patient:08d}_{follow_up:03d}.png"


def write_tree(
    root: Path, num_films: int = 18, *, flat: bool = False, kaggle: bool = False, size: tuple[int, int] = (40, 48)
) -> list[str]:
    """An NIH-format tree of ``num_films`` films, two per patient; returns the image names."""
    folder = root / "images" if flat else root / "images_001" / "images"
    folder.mkdir(parents=True)
    header, tail = (HEADER + ",", ",") if kaggle else (HEADER, "")
    lines, names = [header], []
    for i in range(num_films):
        patient, follow_up = i // 2 + 1, i % 2
        name = film_name(patient, follow_up)
        age = 414 if kaggle and i == 0 else 20 + i
        lines.append(
            f"{name},{FINDINGS[i % len(FINDINGS)]},{follow_up},{patient},{age},"
            f"{'MF'[i % 2]},{('PA', 'AP')[i % 2]},{size[1]},{size[0]},0.14,0.14{tail}"
        )
        cv2.imwrite(str(folder / name), np.full(size, 10 * i, np.uint8))
        names.append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return names


def read_split(builder, split: str) -> list[dict]:
    source = records.data_source(builder, split)
    return [source[i] for i in range(len(source))]


def all_examples(builder) -> dict[str, dict]:
    """Image name -> example, over every split the build wrote (tiny trees leave some empty)."""
    return {e["image_name"].decode(): e for split in builder.info.splits for e in read_split(builder, split)}


def assert_nothing_built(data_dir: Path) -> None:
    """Nothing but the build lock's guard file (kept: removing it would race with a waiting build)."""
    files = data_dir.rglob("*") if data_dir.exists() else []
    leftovers = sorted(str(p.relative_to(data_dir)) for p in files if not p.name.endswith(".lock.guard"))
    assert leftovers == []


def test_builds_nested_tree_with_worker_pool(tmp_path):
    names = write_tree(tmp_path / "nih")
    builder = nih.build_dataset(tmp_path / "nih", tmp_path / "data", nih.make_config("patient", 32), num_workers=2)
    report = json.loads((Path(builder.data_dir) / building.BUILD_REPORT).read_text())
    selected = [n for i, n in enumerate(names) if i % len(FINDINGS) < 7]
    assert report["patients_crossing_splits"] == 0 and report["skipped"] == []
    assert builder.info.features["label"].names == list(labels.CLASS_NAMES)
    assert set(builder.info.splits.keys()) == set(metadata.SPLIT_NAMES)
    seen = []
    for split in metadata.SPLIT_NAMES:
        examples = read_split(builder, split)
        assert np.bincount([e["label"] for e in examples], minlength=6).tolist() == report["class_counts"][split]
        for example in examples:
            name = example["image_name"].decode()
            i = names.index(name)
            assert example["patient_id"] == i // 2 + 1 and example["follow_up"] == i % 2
            assert example["age"] == 20 + i and example["sex"] == b"MF"[i % 2 : i % 2 + 1]
            assert example["view_position"] == (b"PA", b"AP")[i % 2]
            assert example["label"] == labels.class_index(FINDINGS[i % len(FINDINGS)])
            image = cv2.imdecode(np.frombuffer(example["image"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.shape == (32, 32)
            seen.append(name)
    assert sorted(seen) == sorted(selected)


def test_kaggle_csv_flat_images_manifest_and_seed_split(tmp_path):
    names = write_tree(tmp_path / "nih", 24, flat=True, kaggle=True)
    pinned = [
        names[9],
        names[0],
        names[3],
        names[1],
        names[4],
        names[2],
        names[5],
        names[10],
        names[11],
        names[12],
        names[13],
        names[14],
    ]
    manifest = ["Image Index,Finding Labels"] + [
        f"{n},{'Nodule/Mass' if FINDINGS[names.index(n) % 9] in ('Nodule', 'Mass') else FINDINGS[names.index(n) % 9]}"
        for n in pinned
    ]
    (tmp_path / "nih" / "Balanced_Chest_Xray_Data.csv").write_text("\n".join(manifest) + "\n")
    builder = nih.build_dataset(tmp_path / "nih", tmp_path / "data", nih.make_config("seed", 32), num_workers=1)
    report = json.loads((Path(builder.data_dir) / building.BUILD_REPORT).read_text())
    assert report["manifest"] == "Balanced_Chest_Xray_Data.csv"
    assert "WARNING" in builder.builder_config.description
    by_name = all_examples(builder)
    assert sorted(by_name) == sorted(pinned)
    subset = metadata.select_subset(
        metadata.read_data_entry(tmp_path / "nih" / "Data_Entry_2017.csv"),
        manifest=metadata.read_manifest(tmp_path / "nih" / "Balanced_Chest_Xray_Data.csv"),
    )
    expected = {name: sorted(frame["Image Index"]) for name, frame in metadata.split_by_image(subset).items()}
    assert {s: sorted(e["image_name"].decode() for e in read_split(builder, s)) for s in expected} == expected
    assert by_name[names[0]]["age"] == metadata.MISSING_AGE  # Kaggle's age 414


def test_official_lists_are_counted_in_the_report(tmp_path):
    names = write_tree(tmp_path / "nih")
    (tmp_path / "nih" / "test_list.txt").write_text("\n".join(names[:4]) + "\n")
    (tmp_path / "nih" / "train_val_list.txt").write_text("\n".join(names[4:]) + "\n")
    plan = nih.plan_build(tmp_path / "nih", nih.make_config("patient", 32))
    assert sum(plan.summary["on_official_test_list"].values()) == 4  # names[:4] are all selected


def test_box_follows_padding_and_resize(tmp_path):
    root = tmp_path / "nih"
    write_tree(root, 2, size=(40, 80))  # 80 wide, 40 high: padded 20 rows above and below
    film = np.zeros((40, 80), np.uint8)
    film[10:30, 48:72] = 255  # box x=48, y=10, w=24, h=20
    cv2.imwrite(str(root / "images_001" / "images" / film_name(1, 0)), film)  # Atelectasis
    (root / nih_layout.BBOX_FILE).write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        f"{film_name(1, 0)},Effusion,1,1,2,2\n"  # another finding's box: not attached
        f"{film_name(1, 0)},Atelectasis,48,10,24,20\n"
    )
    builder = nih.build_dataset(root, tmp_path / "data", nih.make_config("patient", 64), num_workers=1)
    by_name = all_examples(builder)
    example = by_name[film_name(1, 0)]
    np.testing.assert_allclose(example["bbox"], [48 * 0.8, (10 + 20) * 0.8, 24 * 0.8, 20 * 0.8])
    image = cv2.imdecode(np.frombuffer(example["image"], np.uint8), cv2.IMREAD_UNCHANGED)
    ys, xs = np.nonzero(image > 127)
    x, y, w, h = example["bbox"]
    assert abs(xs.min() - x) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1
    assert abs(ys.min() - y) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1
    assert by_name[film_name(1, 1)]["bbox"].tolist() == list(nih.NO_BOX)


def test_image_size_512(tmp_path):
    write_tree(tmp_path / "nih", 2, size=(300, 260))
    builder = nih.build_dataset(tmp_path / "nih", tmp_path / "data", nih.make_config("patient", 512), num_workers=1)
    examples = all_examples(builder)
    assert len(examples) == 2
    for example in examples.values():
        assert cv2.imdecode(np.frombuffer(example["image"], np.uint8), cv2.IMREAD_UNCHANGED).shape == (512, 512)


def encode_with_pil(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_image_forms_become_gray_uint8():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    assert np.array_equal(images.decode_gray(cv2.imencode(".png", gray)[1].tobytes()), gray)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luminance 0.299 * 255
    assert np.all(images.decode_gray(encode_with_pil(rgb, "RGB")) == 76)
    rgba = np.concatenate([rgb, np.zeros((6, 8, 1), np.uint8)], axis=-1)  # alpha ignored
    assert np.all(images.decode_gray(encode_with_pil(rgba, "RGBA")) == 76)
    la = np.stack([gray, np.full_like(gray, 9)], axis=-1)
    assert np.array_equal(images.decode_gray(encode_with_pil(la, "LA")), gray)
    sixteen = np.arange(48, dtype=np.uint16).reshape(6, 8) * 20 + 1000  # 1000..1940: scaled, not clipped
    decoded = images.decode_gray(cv2.imencode(".png", sixteen)[1].tobytes())
    assert decoded.min() == 0 and decoded.max() == 255
    assert np.all(np.diff(decoded.ravel().astype(int)) >= 0)
    jpeg = images.decode_gray(cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))[1].tobytes())
    assert abs(int(jpeg.mean()) - 128) <= 1


def test_resize_square_pads_centred_with_area_interpolation():
    tall = np.full((100, 50), 200, np.uint8)
    square = images.resize_square(tall, 50)
    assert square.shape == (50, 50)
    assert np.all(square[:, 13:37] == 200) and np.all(square[:, :12] == 0) and np.all(square[:, 38:] == 0)
    stripes = np.tile(np.array([0, 255], np.uint8), (64, 32))  # area averages stripes, linear would alias
    assert np.all(np.abs(images.resize_square(stripes, 32).astype(int) - 128) <= 1)


@pytest.mark.parametrize("case", ["no_manual_dir", "no_csv", "missing_columns", "missing_images", "corrupt_image"])
def test_bad_input_names_the_problem_and_builds_nothing(tmp_path, case):
    root, data_dir = tmp_path / "nih", tmp_path / "data"
    if case != "no_manual_dir":
        names = write_tree(root)
    folder = root / "images_001" / "images"
    if case == "no_csv":
        (root / "Data_Entry_2017.csv").unlink()
        error, pattern = metadata.MetadataError, rf"{re.escape(str(root))}.*Data_Entry_2017\.csv"
    elif case == "no_manual_dir":
        error, pattern = metadata.MetadataError, rf"manual_dir {re.escape(str(root))} does not exist"
    elif case == "missing_columns":
        (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient Age\nx.png,Effusion,3\n")
        error, pattern = metadata.MetadataError, r"\['Follow-up #', 'Patient ID', 'Patient Gender', 'View Position'\]"
    elif case == "missing_images":
        (folder / names[2]).unlink()
        (folder / names[3]).unlink()
        (folder / names[0]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # not reached: checked first
        error, pattern = FileNotFoundError, rf"2 of 14 selected images are missing.*{names[2]}.*{names[3]}"
    else:
        (folder / names[5]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        error, pattern = images.ImageError, rf"{re.escape(str(folder / names[5]))}: corrupt"
    with pytest.raises(error, match=pattern):
        nih.build_dataset(root, data_dir, nih.make_config("patient", 32), num_workers=1)
    assert_nothing_built(data_dir)


def test_skip_bad_images_builds_the_rest_and_reports_them(tmp_path):
    root = tmp_path / "nih"
    names = write_tree(root)
    folder = root / "images_001" / "images"
    (folder / names[2]).unlink()
    (folder / names[5]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    builder = nih.build_dataset(
        root, tmp_path / "data", nih.make_config("patient", 32), num_workers=1, skip_bad_images=True
    )
    report = json.loads((Path(builder.data_dir) / building.BUILD_REPORT).read_text())
    assert [s["image"] for s in report["skipped"]] == [names[2], names[5]]
    assert report["skipped"][0]["reason"] == "missing"
    assert str(folder / names[5]) in report["skipped"][1]["reason"]
    built = set(all_examples(builder))
    assert len(built) == 12 and not built & {names[2], names[5]}
    assert sum(map(sum, report["class_counts"].values())) == 12


def test_phantom_tree_builds_with_its_boxes(tmp_path):
    tree = phantom.write_nih_tree(tmp_path / "nih", 8, seed=3, image_size=64)
    builder = nih.build_dataset(tree, tmp_path / "data", nih.make_config("patient", 32), num_workers=1)
    examples = all_examples(builder).values()
    boxes = np.array([e["bbox"] for e in examples if e["bbox"][0] >= 0])
    no_finding = labels.CLASS_NAMES.index("No Finding")
    assert len(boxes) == sum(e["label"] != no_finding for e in examples)  # every finding has its box
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= 32 + 1e-3)


def test_registered_configs_are_accepted_by_value(tmp_path):
    builder = nih.NihChestXray(config=nih.make_config("seed", 256), data_dir=tmp_path)
    assert builder.builder_config is nih.NihChestXray.BUILDER_CONFIGS[1]
    assert nih.make_config("patient", 256, seed=7).name == "patient_256_n3260_seed7"


# --- a shared data_dir: what a build was made from, dead builds, concurrent builds ----------------------


def test_a_build_from_other_files_is_refused_naming_both(tmp_path):
    root, data_dir, config = tmp_path / "nih", tmp_path / "data", nih.make_config("patient", 32)
    write_tree(root)
    built = nih.build_dataset(root, data_dir, config, num_workers=1)
    report = json.loads((Path(built.data_dir) / building.BUILD_REPORT).read_text())
    assert report["built_from"]["images_found"] == 18 and report["built_from"]["skip_bad_images"] is False
    assert nih.build_dataset(root, data_dir, config, num_workers=1).data_dir == built.data_dir  # same files: reused
    with pytest.raises(building.DatasetMismatchError, match=r"skip_bad_images: built from False, now True"):
        nih.build_dataset(root, data_dir, config, num_workers=1, skip_bad_images=True)
    entry = root / "Data_Entry_2017.csv"
    entry.write_text("".join(entry.read_text().splitlines(keepends=True)[:-2]))  # two rows fewer
    with pytest.raises(
        building.DatasetMismatchError,
        match=rf"the dataset in {re.escape(built.data_dir)} was not built from what the config names "
        r"\(files.Data_Entry_2017.csv: built from '[0-9a-f]{64}', now '[0-9a-f]{64}'\); use another "
        r"config.data.data_dir, or delete that folder",
    ):
        nih.build_dataset(root, data_dir, config, num_workers=1)


def test_a_build_removes_what_a_killed_build_left(tmp_path, caplog):
    root, data_dir, config = tmp_path / "nih", tmp_path / "data", nih.make_config("patient", 32)
    write_tree(root)
    dead = data_dir / "nih_chest_xray" / config.name / "incomplete.ABC123_1.0.0"
    dead.mkdir(parents=True)
    (dead / "nih_chest_xray-train.array_record-00000-of-00001").write_bytes(b"half")
    with caplog.at_level("WARNING"):
        nih.build_dataset(root, data_dir, config, num_workers=1)
    assert not dead.exists() and f"removing {dead}" in caplog.text


def test_a_phantom_tree_that_fails_halfway_leaves_nothing_behind(tmp_path, monkeypatch):
    data_config = base_config().data
    data_config.phantom_patients, data_config.stored_size, data_config.build_workers = 6, 32, 1
    write_whole_tree = phantom.write_nih_tree

    def disk_full_at_the_box_list(root, *args, **kwargs):
        write_whole_tree(root, *args, **kwargs)
        (Path(root) / "BBox_List_2017.csv").write_text("Image Index,Fin")  # cut short
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(phantom, "write_nih_tree", disk_full_at_the_box_list)
    with pytest.raises(OSError, match="No space left on device"):
        dataset.build(data_config, tmp_path)
    tree = dataset.manual_dir(data_config, tmp_path)
    assert not tree.exists() and list(tree.parent.iterdir()) == []
    monkeypatch.undo()
    built = dataset.build(data_config, tmp_path)  # a later run writes the whole tree and builds it
    assert (tree / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox")
    assert sum(building.read_build_report(built)["images"].values()) > 0


def test_full14_builds_nih_split_with_finding_vectors_and_boxes(tmp_path):
    """Every film, labelled by a 0/1 vector over the 14 findings; the official lists split it; each
    finding keeps its own box (NIH's "Infiltrate" is Infiltration)."""
    names = write_tree(tmp_path / "nih", num_films=24)
    (tmp_path / "nih" / "test_list.txt").write_text("\n".join(names[:8]) + "\n")
    (tmp_path / "nih" / "train_val_list.txt").write_text("\n".join(names[8:]) + "\n")
    (tmp_path / "nih" / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        f"{names[8]},Atelectasis,4,8,12,16\n{names[8]},Effusion,0,0,8,8\n{names[7]},Infiltrate,1,2,3,4\n"
        f"{names[0]},Pneumothorax,1,1,1,1\n"  # names[0] shows Atelectasis only: not attached
    )
    builder = nih.build_dataset(tmp_path / "nih", tmp_path / "tfds", nih.make_config(task="full14", image_size=32))
    assert builder.builder_config.name == "full14_32"
    examples = all_examples(builder)
    assert sorted(examples) == sorted(names)  # every film, No Finding and multi-finding ones too
    for name, example in examples.items():
        finding = FINDINGS[names.index(name) % len(FINDINGS)]
        assert example["label"].tolist() == labels.multi_hot(finding).tolist(), name
    assert sorted(e["image_name"].decode() for e in read_split(builder, "test")) == sorted(names[:8])
    report = building.read_build_report(builder)
    assert report["split"].startswith("official: NIH's test_list.txt is the test split")
    assert report["class_names"] == list(labels.FINDINGS14) and report["task"]["multi_label"]
    assert report["boxes"] == {
        "attached": {"Atelectasis": 1, "Effusion": 1, "Infiltration": 1},
        "dropped": {"Pneumothorax": 1},
    }
    scale = 32 / 48  # 40 x 48 films padded to 48 x 48, then resized to 32
    boxed = examples[names[8]]["bbox"]  # "Atelectasis|Effusion"
    np.testing.assert_allclose(boxed[0], np.array([4, 8 + 4, 12, 16]) * scale, rtol=1e-6)
    np.testing.assert_allclose(boxed[2], np.array([0, 4, 8, 8]) * scale, rtol=1e-6)
    assert (np.delete(boxed, [0, 2], axis=0) == nih.NO_BOX).all()
    assert report["images"]["test"] == 8 and sum(report["class_counts"]["test"]) == sum(
        int(labels.multi_hot(FINDINGS[i % len(FINDINGS)]).sum()) for i in range(8)
    )


def encoded_list(names: list[str], encoding: str) -> bytes:
    """A split list as an editor on Windows may save it: CRLF, UTF-8 with a BOM or UTF-16 (with one)."""
    text = "\r\n".join(names) + "\r\n"
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_split_lists_saved_with_a_byte_order_mark_read_as_plain_ones(tmp_path, encoding):
    names = [film_name(patient, 0) for patient in range(1, 6)]
    (tmp_path / "test_list.txt").write_bytes(encoded_list(names, encoding))
    assert metadata.read_image_list(tmp_path / "test_list.txt") == names


def test_a_utf16_split_list_splits_as_a_plain_one(tmp_path):
    names = write_tree(tmp_path / "nih", num_films=24)
    (tmp_path / "nih" / "test_list.txt").write_bytes(encoded_list(names[:8], "utf-16"))
    (tmp_path / "nih" / "train_val_list.txt").write_bytes(encoded_list(names[8:], "utf-8-sig"))
    builder = nih.build_dataset(tmp_path / "nih", tmp_path / "tfds", nih.make_config(task="full14", image_size=32))
    assert sorted(e["image_name"].decode() for e in read_split(builder, "test")) == sorted(names[:8])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "names no image"),
        (b" \r\n\n\t\n", "names no image"),
        (b"\xef\xbb\xbf\r\n", "names no image"),
        (b"00000001_000.png\n\xe9t\xe9.png\n", r"is not text in UTF-8 \(or UTF-16 with a byte-order mark\)"),
        ("00000001_000.png\n".encode("utf-16-le"), "holds NUL characters"),
        (b"\xff\xfe0\x00\x00\xd8", r"is not text in UTF-8 \(or UTF-16"),  # a lone surrogate
    ],
)
def test_split_lists_that_are_empty_or_not_text_are_refused_naming_the_file(tmp_path, content, message):
    names = write_tree(tmp_path / "nih", num_films=24)
    test_list = tmp_path / "nih" / "test_list.txt"
    test_list.write_bytes(content)
    (tmp_path / "nih" / "train_val_list.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(metadata.MetadataError, match=rf"^{re.escape(str(test_list))} {message}") as refused:
        nih.build_dataset(tmp_path / "nih", tmp_path / "tfds", nih.make_config(task="full14", image_size=32))
    assert "\n" not in str(refused.value)
    assert_nothing_built(tmp_path / "tfds")
