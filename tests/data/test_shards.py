"""tlkit.data.shards: `tlkit pack` writes shuffled, verified TFRecord shards with an index; a
corrupt shard is named by file and record."""
from __future__ import annotations

import os
from collections import Counter

import pytest
import tensorflow as tf

from tlkit.data import folders, shards
from tlkit.errors import TlkitError


def test_pack_to_ram_writes_every_image_once_in_shuffled_verified_shards(tiny_images):
    out = "ram://packs/tiny"
    index = shards.pack(tiny_images, out, shard_bytes=4000)
    images = folders.scan(tiny_images)
    assert shards.read_index(out) == index
    assert index["classes"] == images.classes and index["report"]["counts"] == [8, 8, 8]
    assert len(index["shards"]) > 1 and all(len(s["labels"]) for s in index["shards"])
    digests = [d for s in index["shards"] for d in s["digests"]]
    labels = [label for s in index["shards"] for label in s["labels"]]
    assert Counter(zip(digests, labels)) == Counter(zip(images.digests, images.labels))
    assert digests != images.digests  # shuffled
    assert sorted(tf.io.gfile.listdir(out)) == sorted([s["file"] for s in index["shards"]] + [shards.INDEX])
    shards.verify(out)


def test_pack_refuses_a_folder_that_is_not_empty(tiny_images, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(TlkitError, match="is not empty"):
        shards.pack(tiny_images, str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def record_data(path) -> list[tuple[int, int]]:
    """(start, end) of each record's data in a TFRecord file: a uint64 length and its CRC, the
    data, the data's CRC."""
    data, at, spans = path.read_bytes(), 0, []
    while at < len(data):
        length = int.from_bytes(data[at:at + 8], "little")
        spans.append((at + 12, at + 12 + length))
        at += 16 + length
    return spans


def corrupt(path, how: str) -> None:
    """Damage the second record of the shard `path`: a byte of its data flipped (its CRC no longer
    matches), or the file cut in the middle of its data."""
    start, end = record_data(path)[1]
    data = bytearray(path.read_bytes())
    if how == "flipped":
        data[(start + end) // 2] ^= 0xFF
    else:
        del data[(start + end) // 2:]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_corrupt_shard_is_named_by_file_and_record(tiny_images, tmp_path, how):
    out = tmp_path / "packed"
    index = shards.pack(tiny_images, str(out), shard_bytes=15000)
    path = out / index["shards"][0]["file"]
    corrupt(path, how)
    for read in (shards.verify, lambda folder: shards.record_bytes(shards.image_set(folder).files)):
        with pytest.raises(TlkitError) as error:
            read(str(out))
        message = str(error.value)
        assert message.startswith(f"shard '{path}' is corrupt at record 2 (") and len(message.splitlines()) == 1


def test_training_from_a_corrupt_pack_names_the_shard_and_record_without_a_traceback(cli, tiny_images, tmp_path):
    for how in ("flipped", "truncated"):
        out = tmp_path / how
        index = shards.pack(tiny_images, str(out), shard_bytes=15000)
        path = out / index["shards"][-1]["file"]
        corrupt(path, how)
        code, _, err = cli("finetune", "--base", "lenet5", "--weights", "none", "--image-size", "32", "--data", out,
                           "--out", tmp_path / f"run-{how}", "--epochs-head", "1", "--epochs-finetune", "1")
        assert code != 0 and "Traceback" not in err, err
        assert f"shard '{path}' is corrupt at record 2 (" in err.strip().splitlines()[-1]


def test_a_folder_without_an_index_is_not_a_pack(tmp_path):
    with pytest.raises(TlkitError, match="has no index.json"):
        shards.read_index(str(tmp_path))


def test_tlkit_pack_writes_shards_and_says_so(cli, tiny_images, tmp_path):
    code, out, err = cli("pack", "--data", tiny_images, "--out", tmp_path / "packed", "--shard-mb", 1)
    assert code == 0, err
    assert f"packed 24 images of 3 classes into 1 shard in {tmp_path / 'packed'}" in out
    shards.verify(str(tmp_path / "packed"))
    code, _, err = cli("pack", "--data", tiny_images, "--out", tmp_path / "packed")
    assert code != 0 and "is not empty" in err and "Traceback" not in err


def test_shards_feed_the_images_and_labels_the_folder_feeds(tiny_images):
    from tlkit.data.pipeline import make_dataset

    out = "ram://packs/feed"
    shards.pack(tiny_images, out, shard_bytes=4000)
    from_shards = list(shards.dataset(out, (24, 24)).as_numpy_iterator())
    images = folders.scan(tiny_images)
    from_folder = [(x, y) for xs, ys in make_dataset(images, (24, 24), 8).as_numpy_iterator() for x, y in zip(xs, ys)]
    assert len(from_shards) == len(from_folder) == 24

    assert sorted(map(key, from_shards)) == sorted(map(key, from_folder))  # bit for bit
    halves = [list(shards.dataset(out, (24, 24), num_workers=2, worker_index=i).as_numpy_iterator()) for i in (0, 1)]
    assert sorted(map(key, halves[0] + halves[1])) == sorted(map(key, from_shards)) and all(halves)


def test_a_pack_is_the_image_set_and_split_of_its_folder(tiny_images):
    from tlkit.data.splits import split

    out = "ram://packs/set"
    shards.pack(tiny_images, out, seed=3, shard_bytes=4000)
    packed, folder = shards.image_set(out), folders.scan(tiny_images)
    assert (packed.classes, packed.labels, packed.digests) == (folder.classes, folder.labels, folder.digests)
    assert sorted(f.name for f in packed.files) == sorted(
        f"{shard['file']}#{n}" for shard in shards.read_index(out)["shards"] for n in range(1, len(shard["labels"]) + 1))
    for a, b in zip(split(packed, 0.25, 7), split(folder, 0.25, 7)):
        assert (a.labels, a.digests) == (b.labels, b.digests)


def test_the_data_report_path_and_pipeline_read_a_pack_as_its_folder(tiny_images, tmp_path):
    from tlkit.data.pipeline import make_dataset
    from tlkit.data.report import prepare

    out = str(tmp_path / "packed")
    shards.pack(tiny_images, out, shard_bytes=4000)
    (ptrain, pval, _), (ftrain, fval, _) = (prepare(d, val_split=0.25, seed=1) for d in (out, tiny_images))
    assert (ptrain.digests, pval.digests) == (ftrain.digests, fval.digests)
    # with the image cache (the default), the folder's batches, image for image
    batches = [list(make_dataset(s, (24, 24), 4, shuffle=True, seed=2, cache="memory").as_numpy_iterator())
               for s in (ptrain, ftrain)]
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(*batches))
    # without, an order of its own (streamed from the shards), of the same images and labels
    batches = [list(make_dataset(s, (24, 24), 4, shuffle=True, seed=2, cache="none").as_numpy_iterator())
               for s in (ptrain, ftrain)]
    assert sorted(map(key, unbatched(batches[0]))) == sorted(map(key, unbatched(batches[1])))
    # a pass in the set's order (prediction, extraction) keeps it
    ordered = [unbatched(make_dataset(s, (24, 24), 4, cache="none").as_numpy_iterator()) for s in (pval, fval)]
    assert list(map(key, ordered[0])) == list(map(key, ordered[1]))


def unbatched(batches) -> list:
    return [(x, y) for xs, ys in batches for x, y in zip(xs, ys)]


def key(pair):
    return pair[0].tobytes(), int(pair[1])


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_training_from_a_pack_streams_its_records_shuffled_and_seeded(tiny_images, tmp_path, monkeypatch, where):
    from tlkit.data.pipeline import decode_once, make_dataset
    from tlkit.data.splits import split

    out = str(tmp_path / "packed") if where == "folder" else "ram://packs/stream"
    shards.pack(tiny_images, out, shard_bytes=4000)
    (train, _), (ftrain, _) = (split(s, 0.25, 1) for s in (shards.image_set(out), folders.scan(tiny_images)))
    folder = sorted(map(key, unbatched(make_dataset(ftrain, (24, 24), 4).as_numpy_iterator())))

    def held(files):
        raise AssertionError("a training pipeline held every record's bytes")

    monkeypatch.setattr(shards, "record_bytes", held)
    streamed = make_dataset(train, (24, 24), 4, shuffle=True, seed=2, cache="none")
    epochs = [unbatched(streamed.as_numpy_iterator()) for _ in range(2)]
    assert sorted(map(key, epochs[0])) == sorted(map(key, epochs[1])) == folder  # each label the set's
    assert list(map(key, epochs[0])) != list(map(key, epochs[1]))  # shuffled afresh every epoch
    again = unbatched(make_dataset(train, (24, 24), 4, shuffle=True, seed=2, cache="none").as_numpy_iterator())
    assert list(map(key, again)) == list(map(key, epochs[0]))  # and as the seed says
    cached = make_dataset(train, (24, 24), 4, cache=decode_once(train, (24, 24), 3, "memory"))
    assert sorted(map(key, unbatched(cached.as_numpy_iterator()))) == folder


@pytest.mark.integration
def test_training_from_a_pack_of_the_sample_photos_gives_the_folder_runs_metrics(tmp_path):
    import json
    from pathlib import Path

    import tlkit

    photos = Path(__file__).parents[2] / "data_samples" / "photos"
    shards.pack(photos, str(tmp_path / "packed"))
    metrics = []
    for name, data in (("folder", photos), ("shards", tmp_path / "packed")):
        run = tlkit.finetune("lenet5", recipe="head_only", weights="none", pooling="flatten", data=str(data),
                             image_size=32, batch_size=16, seed=5, stages={"head": {"epochs": 2}},
                             out=tmp_path / name, verbose=0)
        metrics.append(json.loads((Path(run.path) / "metrics.json").read_text()))
        evaluated = tlkit.evaluate(run.path, str(data), tmp_path / f"{name}.json")
        metrics[-1]["evaluated"] = {k: v for k, v in evaluated.items() if isinstance(v, float)}
    assert metrics[0].keys() == metrics[1].keys() and metrics[0]["evaluated"]
    numbers = [[v for v in json.dumps(m, sort_keys=True).replace(",", " ").split() if v[0].isdigit()] for m in metrics]
    assert numbers[0] and len(numbers[0]) == len(numbers[1])
    assert all(abs(float(a.strip("}]")) - float(b.strip("}]"))) <= 1e-6 for a, b in zip(*numbers))


def test_each_of_two_workers_reads_only_its_own_shard_files(tiny_images, tmp_path):
    from tlkit.data.pipeline import make_dataset
    from tlkit.data.splits import split
    from tlkit.engine.strategy import per_worker_input

    out = str(tmp_path / "packed")
    index = shards.pack(tiny_images, out, shard_bytes=15000)
    train, _ = split(shards.image_set(out), 0.25, 1)
    files = [f"{out}/{shard['file']}" for shard in index["shards"]]
    assert len(files) % 2 == 1  # an odd share out, so the shares differ before padding
    dataset_fn = per_worker_input(train, 6, lambda share, batch: make_dataset(share, (24, 24), batch, shuffle=True))
    shares = []
    for worker in (0, 1):
        others = [f for f in files if f not in files[worker::2]]
        for f in others:  # another worker's files, out of reach: reading one fails
            os.rename(f, f + ".away")
        try:
            batches = list(dataset_fn(tf.distribute.InputContext(2, worker, 2)).as_numpy_iterator())
        finally:
            for f in others:
                os.rename(f + ".away", f)
        assert {len(y) for _, y in batches[:-1]} == {3}  # half of each global batch of 6
        share = shards.worker_share(train, 2, worker)
        assert sum(len(y) for _, y in batches) == len(share)
        assert {str(f).rsplit("#", 1)[0] for f in share.files} == set(files[worker::2])
        shares.append(share)
    assert len(shares[0]) == len(shares[1])  # as many steps on each worker
    assert not set(shares[0].files) & set(shares[1].files)
    assert set(shares[0].files) | set(shares[1].files) == set(train.files)


def test_more_workers_than_shards_is_one_line(tiny_images):
    shards.pack(tiny_images, "ram://packs/one", shard_bytes=1 << 20)
    with pytest.raises(TlkitError, match="in 1 shard\\(s\\), fewer than the 2 workers"):
        shards.worker_share(shards.image_set("ram://packs/one"), 2, 0)


@pytest.mark.integration
def test_audit_of_a_pack_finds_what_the_audit_of_its_folder_finds(cli, tmp_path):
    import csv
    import hashlib
    import json
    import shutil
    from pathlib import Path

    from PIL import Image

    root = tmp_path / "photos"
    shutil.copytree(Path(__file__).parents[2] / "data_samples" / "photos", root, ignore=shutil.ignore_patterns("*.csv"))
    for k, original in enumerate(sorted(root.glob("*/*.jpg"))[::80]):  # near-copies for the perceptual hash
        Image.open(original).convert("RGB").resize((48, 48)).save(root / "cat" / f"copy_{k}.jpg", quality=60)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(root / "cat" / "blank.png")  # an outlier
    shutil.copy(sorted((root / "coffee").iterdir())[0], root / "coffee" / "exact.jpg")  # left out by the scan
    index = shards.pack(root, str(tmp_path / "packed"), shard_bytes=1 << 20)
    digest_of = {f"{tmp_path / 'packed'}/{shard['file']}#{n}": digest
                 for shard in index["shards"] for n, digest in enumerate(shard["digests"], start=1)}

    found = []
    for name, data in (("folder", root), ("pack", tmp_path / "packed")):
        code, _, err = cli("audit", "--base", "efficientnet_lite0", "--data", data, "--out", tmp_path / name,
                           "--image-size", "64", "--cache", tmp_path / f"cache-{name}")  # each decodes its own
        assert code == 0, err
        with open(tmp_path / name / "issues.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # an image by its content: a file's path, a record's shard#number
            path = row.pop("path")
            row["image"] = digest_of.get(path) or hashlib.sha256(Path(path).read_bytes()).hexdigest()
            row.pop("detail")  # names the files of a group
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        found.append((sorted(map(json.dumps, rows)), summary["counts"], summary["images"]))
    assert found[0] == found[1]
    assert found[0][1]["duplicate"] >= 4 and found[0][1]["blank"] == 1


def test_a_records_digest_comes_from_the_index_and_is_its_bytes(tiny_images, tmp_path):
    import hashlib

    out = str(tmp_path / "packed")
    shards.pack(tiny_images, out, shard_bytes=4000)
    files = shards.image_set(out).files[::-3]
    assert shards.record_digests(files) == [hashlib.sha256(b).hexdigest() for b in shards.record_bytes(files)]
