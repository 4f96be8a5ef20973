"""TFRecord shards of a folder of images (`tlkit pack`): the checked images of a scan, shuffled,
their encoded bytes unchanged, in shards of about SHARD_BYTES, with an index file (index.json)
holding the class list, each shard's labels and SHA-256 digests, and the scan's data report.

Paths go through `tf.io.gfile`, so `--out` may be any file system TensorFlow serves (`gs://`,
`ram://`, S3 through its plugin). The index is written last, once every shard has been read back
and its digests compared: a folder with an index is a whole pack.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit._util import buckets
from tlkit._util.urls import as_path
from tlkit.data.checks import Progress, printable
from tlkit.data.decode import decode_image
from tlkit.data.folders import ImageSet, scan
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

INDEX = "index.json"
SHARD_BYTES = 150 << 20  # 100-200 MB: large reads for a bucket, enough shards to interleave and share out
_RECORD = re.compile(r"shard-\d{5}\.tfrecord#\d+")
# Shard files read at once when streaming a pack's records: enough to overlap reads from a bucket
READERS = 8
# Records (encoded images) shuffled at a time when training streams a pack: `pack` shuffled the
# images once, so a buffer, not the whole set, is enough to vary the batches between epochs
SHUFFLE_BUFFER = 1024
_SHARD_KEY = 1 << 32  # a record's key in `records`: shard * _SHARD_KEY + its number
_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def pack(data, out: str, *, skip_bad: bool = False, seed: int = 0, shard_bytes: int = SHARD_BYTES,
         progress: Progress | None = None) -> dict:
    """Scan `data` (as training scans it), then write its images to shuffled, verified shards in
    `out` (a new or empty folder); the index, as written to `out`/index.json."""
    out = str(out).rstrip("/")
    if tf.io.gfile.exists(out) and tf.io.gfile.listdir(out):
        raise TlkitError(f"'{out}' is not empty: give a new folder for the shards")
    images = scan(data, skip_bad=skip_bad, progress=progress)
    tf.io.gfile.makedirs(out)
    order = np.random.default_rng(seed).permutation(len(images))
    shards, writer, size = [], None, 0
    for i in order:
        with tf.io.gfile.GFile(str(images.files[i]), "rb") as f:
            encoded = f.read()
        if writer is None or (size + len(encoded) > shard_bytes and shards[-1]["labels"]):
            if writer:
                writer.close()
            shards.append({"file": f"shard-{len(shards):05d}.tfrecord", "labels": [], "digests": [], "positions": []})
            writer, size = tf.io.TFRecordWriter(f"{out}/{shards[-1]['file']}"), 0
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[images.labels[i]])),
        })).SerializeToString())
        size += len(encoded)
        shards[-1]["labels"].append(images.labels[i])
        shards[-1]["digests"].append(images.digests[i])
        shards[-1]["positions"].append(int(i))  # the scan's order, so that a split of the pack is the folder's
    writer.close()
    position = {path: i for i, path in enumerate(images.files)}
    index = {
        "classes": images.classes, "shards": shards,
        "report": {"source": printable(images.root), "counts": images.counts(),
                   "skipped": [[printable(p), why] for p, why in images.skipped],
                   # with the kept file's place in the scan's order, so that image_set names its record
                   "duplicates": [[printable(copy), printable(kept), position[kept]] for copy, kept in images.duplicates]},
    }
    verify(out, index)
    with tf.io.gfile.GFile(f"{out}/{INDEX}", "w") as f:
        f.write(json.dumps(index, indent=1) + "\n")
    log.debug("packed %d images of %d classes into %d shards in %s", len(images), len(images.classes),
             len(shards), out)
    return index


def is_pack(folder) -> bool:
    with buckets.served(str(folder)):  # the first look at a --data URL: a scheme TensorFlow lacks, in one line
        return tf.io.gfile.exists(f"{str(folder).rstrip('/')}/{INDEX}")


def read_index(folder: str) -> dict:
    """The index of a pack; a folder without one is not a (finished) pack."""
    path = f"{str(folder).rstrip('/')}/{INDEX}"
    if not tf.io.gfile.exists(path):
        raise TlkitError(f"'{folder}' has no {INDEX}: it is not a folder of shards written by `tlkit pack`")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def image_set(folder: str, classes: list[str] | None = None) -> ImageSet:
    """The ImageSet the scan of the packed folder made (its classes, labels, digests and skipped
    files, in scan order, so `splits.split` divides it as it divides the folder), each file named
    `<shard>#<record>` (the record's 1-based number in its shard). With `classes` (a model's), the
    labels are its; a class of the pack outside it is an error, as a folder's."""
    folder = str(folder).rstrip("/")
    index = read_index(folder)
    if any("positions" not in shard for shard in index["shards"]):
        raise TlkitError(f"the pack '{folder}' was written before packs kept the scan's order, which training from "
                         "it needs: pack the folder again with tlkit pack")
    packed, classes = index["classes"], classes or index["classes"]
    unknown = [name for name in packed if name not in classes]
    if unknown:
        raise TlkitError(f"class '{unknown[0]}' of the pack '{folder}' is not one of the model's classes "
                         f"({', '.join(classes)}): pack a folder with only those classes")
    rows = sorted((position, f"{folder}/{shard['file']}#{n}", classes.index(packed[label]), digest)
                  for shard in index["shards"]
                  for n, (position, label, digest) in enumerate(
                      zip(shard["positions"], shard["labels"], shard["digests"]), start=1))
    report = index["report"]
    # a copy's kept file as its record (a pack written before the place was kept names the file)
    # as_path: a pack on a bucket keeps its URLs whole (a Path folds gs:// into gs:/)
    duplicates = [(as_path(copy), as_path(rows[kept[1]][1] if len(kept) > 1 else kept[0]))
                  for copy, *kept in report["duplicates"]]
    return ImageSet(root=as_path(folder), classes=list(classes), files=[as_path(row[1]) for row in rows],
                    labels=[row[2] for row in rows], digests=[row[3] for row in rows],
                    skipped=[(as_path(p), why) for p, why in report["skipped"]], duplicates=duplicates)


def worker_share(images: ImageSet, num_workers: int, index: int) -> ImageSet:
    """What worker `index` of `num_workers` trains on of `images` (records of one pack, as
    `image_set` names them): the images in its own shard files, every `num_workers`-th of the
    files holding any of them from the `index`-th (as `Dataset.shard` of the file list, and
    tf.data's AutoShardPolicy.FILE, deal them out), so it reads no other worker's files. Every
    share is cycled to the largest one's length, as torch's DistributedSampler pads: the workers'
    steps meet in collectives, so each must run as many steps an epoch."""
    shard_of = [record_ref(f)[0] for f in images.files]
    counts = Counter(shard_of)
    files = sorted(counts)
    if len(files) < num_workers:
        raise TlkitError(f"these {len(images)} images lie in {len(files)} shard(s), fewer than the {num_workers} "
                         "workers, each of which reads its own: pack the data again with a smaller --shard-mb")
    mine = set(files[index::num_workers])
    longest = max(sum(counts[f] for f in files[w::num_workers]) for w in range(num_workers))
    own = [i for i, shard in enumerate(shard_of) if shard in mine]
    return images.subset([own[i % len(own)] for i in range(longest)])


def scan_or_read(data, *, classes: list[str] | None = None, **options) -> ImageSet:
    """The ImageSet of `data`: a pack's (`image_set`), else the scan of its folder (`folders.scan`,
    with `options`), so a command reads `--data shards/` as the folder packed into it."""
    return image_set(data, classes) if is_pack(data) else scan(data, classes=classes, **options)


def is_record(path) -> bool:
    """Whether `path` names a record of a pack (as `image_set` names them)."""
    return _RECORD.fullmatch(Path(path).name) is not None


def record_ref(name) -> tuple[str, int]:
    """(the shard file, the record's 1-based number) of a record as `image_set` names it."""
    shard, number = str(name).rsplit("#", 1)
    return shard, int(number)


def records(files, values, *, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """(encoded image, values[i]) of each record `files[i]` (as `image_set` names them), read as
    they go from the shards holding them, READERS files at a time (interleaved, in parallel): a
    static table of (shard, record number) keeps this set's records (a split keeps a part of each
    shard) and gives what the set says of each (its label, its place), whatever the record holds;
    a record named twice (a worker's share, padded) comes twice. In the shards' order; with
    `shuffle`, the shards are read in an order drawn afresh every epoch, seeded by `seed` (then
    shuffle a buffer of SHUFFLE_BUFFER records, as `make_dataset` does)."""
    refs = [record_ref(f) for f in files]
    paths = sorted({shard for shard, _ in refs})
    shard_of = {path: i for i, path in enumerate(paths)}
    keys = np.array([shard_of[shard] * _SHARD_KEY + n for shard, n in refs], np.int64)
    order = np.argsort(keys, kind="stable")  # the set's places, grouped by record
    unique, first, count = np.unique(keys[order], return_index=True, return_counts=True)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(unique, np.arange(len(unique), dtype=np.int64)), -1)
    first, count, order, values = (tf.constant(a) for a in (first, count, order, np.asarray(values)))

    def read(shard, path):
        return tf.data.TFRecordDataset(path).enumerate(start=1).map(lambda n, record: (shard * _SHARD_KEY + n, record))

    def named(group, record):
        image = tf.io.parse_single_example(record, {"image": _FEATURES["image"]})["image"]
        places = tf.gather(order, tf.range(first[group], first[group] + count[group]))
        return tf.repeat(image[None], count[group], axis=0), tf.gather(values, places)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(read, cycle_length=min(READERS, len(paths)), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    ds = ds.map(lambda key, record: (table.lookup(key), record)).filter(lambda group, _: group >= 0)
    return ds.map(named, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def read_records(ds: tf.data.Dataset, files):
    """Iterate `ds`, a pipeline of the records `files` (`records`), as NumPy; a shard that cannot be
    read there is named by file and record (a TlkitError), as `verify` names it."""
    try:
        yield from ds.as_numpy_iterator()
    except tf.errors.OpError:
        for shard in sorted({record_ref(f)[0] for f in files}):
            for _ in _records(shard):  # raises the TlkitError naming the record
                pass
        raise


def record_digests(files) -> list[str]:
    """The SHA-256 of each record's image (as `image_set` names them), from its pack's index,
    which `pack` compared with the bytes it wrote: no image is read."""
    digest_of = {}
    for folder in {str(f).rsplit("/", 1)[0] for f in files}:
        for shard in read_index(folder)["shards"]:
            digest_of.update((f"{folder}/{shard['file']}#{n}", digest) for n, digest in enumerate(shard["digests"], 1))
    return [digest_of[str(f)] for f in files]


def record_bytes(files) -> np.ndarray:
    """The encoded image of each record `image_set` named, in the order of `files` (held: for a
    pass that must keep the set's order); each shard is read once. A path among them that is not
    a record is read as a file: the copy the scan left out of a pack, which an audit shows beside
    its kept record. An array of objects: as a list, `from_tensor_slices` would pad every image to
    the longest (a fixed-width NumPy array on the way), several times the bytes."""
    found = np.full(len(files), b"", object)
    at = [i for i, ref in enumerate(files) if is_record(ref)]
    for i in sorted(set(range(len(files))) - set(at)):
        with tf.io.gfile.GFile(str(files[i]), "rb") as f:
            found[i] = f.read()
    if at:
        named = [files[i] for i in at]
        for encoded, i in read_records(records(named, np.array(at, np.int64)), named):
            found[i] = encoded
    return found


def dataset(folder: str, image_size: tuple[int, int], *, channels: int = 3, num_workers: int = 1,
            worker_index: int = 0) -> tf.data.Dataset:
    """(float32 image (h, w, channels) in [0, 255], int32 label) of every record, decoded by the
    decoder training uses (so as from the folder), the shards read in parallel by
    `interleave`. Under several workers each reads its own shards (`worker_index` of
    `num_workers`, sharded by file, as `tf.data.experimental.AutoShardPolicy.FILE` would)."""
    folder = str(folder).rstrip("/")
    files = [f"{folder}/{shard['file']}" for shard in read_index(folder)["shards"]]
    if num_workers > len(files):
        raise TlkitError(f"'{folder}' has {len(files)} shards, fewer than the {num_workers} workers: "
                         "pack it again with a smaller --shard-mb")
    ds = tf.data.Dataset.from_tensor_slices(files).shard(num_workers, worker_index)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)

    def example(record):
        parsed = tf.io.parse_single_example(record, _FEATURES)
        return decode_image(parsed["image"], image_size, channels), tf.cast(parsed["label"], tf.int32)

    return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def verify(folder: str, index: dict | None = None) -> None:
    """Read every record of every shard and compare its bytes and label with the index: a corrupt
    shard is named by file and record (1-based)."""
    folder = str(folder).rstrip("/")
    index = index or read_index(folder)
    for shard in index["shards"]:
        path = f"{folder}/{shard['file']}"
        n = 0
        for n, encoded, label in _records(path):
            if n > len(shard["digests"]) or hashlib.sha256(encoded).hexdigest() != shard["digests"][n - 1] \
                    or label != shard["labels"][n - 1]:
                raise TlkitError(f"shard '{path}', record {n}: not the image the index lists "
                                 f"(its bytes or label differ): pack the data again")
        if n != len(shard["digests"]):
            raise TlkitError(f"shard '{path}' holds {n} records, its index {len(shard['digests'])}: "
                             "pack the data again")


def _records(path: str):
    """(1-based number, encoded image, label) of each record of the shard `path`; a record that
    cannot be read (TFRecord's length or data checksum wrong, the file cut short, not an Example
    of an image and a label) a TlkitError naming the shard and the record."""
    n = 0
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = tf.io.parse_single_example(record, _FEATURES)
            n += 1
            yield n, example["image"].numpy(), int(example["label"])
    except tf.errors.OpError as error:  # DataLossError: a bad checksum or length; InvalidArgumentError: a bad Example
        raise TlkitError(f"shard '{path}' is corrupt at record {n + 1} "
                         f"({error.message.splitlines()[0]}): pack the data again") from None
