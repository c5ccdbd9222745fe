"""Event-camera datasets (CIFAR10-DVS, DVS128 Gesture) from their raw files, as the official code sees them.

Raw files → events (t, x, y, p) exactly as SpikingJelly 0.0.0.0.14 decodes them → T frames
``split_by='number'`` (``events.frames_by_number``) at 128×128, cached once under
``data_dir/frames_number_{T}/`` (compressed ``.npz``, no pickles, written atomically, a ``manifest.json``
last) → per example ``events.model_input`` (resize, DVSAugment when training, ON+OFF channel).

* **CIFAR10-DVS**: ``data_dir/<class>/cifar10_<class>_<i>.aedat`` (the ten figshare zips, extracted). The
  AEDAT 2.0 stream is read by tonic (``tonic.io``); addresses decode as SpikingJelly's: x = 127 − y_raw,
  y = 127 − x_raw, p = 1 − p_raw. Split: ``splits/cifar10_dvs.json`` (in the package, its SHA-256 below),
  the official one — per class, the first 900 files in lexicographic order train, the last 100 test.
* **DVS128 Gesture**: ``data_dir/DvsGesture/`` (``DvsGesture.tar.gz`` extracted): ``userXX_<light>.aedat``
  (AEDAT 3.1), ``userXX_<light>_labels.csv`` and ``trials_to_train.txt`` / ``trials_to_test.txt``. Each csv row
  (class, start, end) is one sample: the events with start ≤ t < end. The AEDAT 3.1 reader is our own numpy
  one, equal to SpikingJelly's ``load_aedat_v3`` (tonic's treats every packet as polarity events and drops
  the timestamp overflow). Labels are the class folder index of torchvision's ``DatasetFolder`` over the
  folders '0'…'10' in *string* order, as in the official runs, so that official checkpoints evaluate right.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .events import frames_by_number, model_input
from .base import DataFileError, DatasetNotFoundError, StepIndexedData

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_DIR = Path(__file__).parent / "splits"
CIFAR10_DVS_SPLIT_SHA256 = "773ea65f2cc62728e53dcc1d6f4e4e567811f2c734f89d14ac1096f10712eb4e"
SENSOR = (128, 128)


# ----------------------------------------------------------------------------------------------- readers
def read_cifar10_dvs(path: str | Path) -> dict[str, np.ndarray]:
    """A CIFAR10-DVS ``.aedat`` (AEDAT 2.0, big-endian address/timestamp pairs) → events, via tonic."""
    try:
        from tonic.io import get_aer_events_from_file, read_aedat_header_from_file
    except ImportError as err:
        raise ImportError("reading CIFAR10-DVS needs tonic: pip install 'sresformer_jax[events]' "
                          "(or pip install -r requirements.txt)") from err

    version, start, _ = read_aedat_header_from_file(str(path))
    size = os.path.getsize(path)
    if (size - start) % 8:       # an event is 8 bytes: the file was cut inside one (tonic would drop it silently)
        raise DataFileError(path, f"truncated AEDAT 2.0 file: {size - start} bytes of events after the header is "
                                  "not a whole number of 8-byte events")
    ev = get_aer_events_from_file(str(path), version, start)
    if len(ev) == 0:
        raise DataFileError(path, "an AEDAT 2.0 file without events")
    addr = ev["address"].astype(np.int64)
    x_raw, y_raw, p_raw = (addr & 0xFE) >> 1, (addr & 0x7F00) >> 8, addr & 1
    return {"t": ev["timeStamp"].astype(np.int64), "x": 127 - y_raw, "y": 127 - x_raw, "p": 1 - p_raw}


def read_aedat3(path: str | Path) -> dict[str, np.ndarray]:
    """An AEDAT 3.1 file (DVS128 Gesture) → polarity events; packets of other types are skipped.
    Packet header (28 bytes): type u16 @0, event size u32 @4, ts overflow u32 @12, capacity u32 @16; an event
    is (data u32, ts u32): x = data>>17 & 0x7FFF, y = data>>2 & 0x7FFF, p = data>>1 & 1, t = ts | overflow<<31."""
    with open(path, "rb") as f:
        line = f.readline()
        while line.startswith(b"#") and line != b"#!END-HEADER\r\n":
            line = f.readline()
        data = f.read()
    out = {k: [] for k in "txyp"}
    pos = 0
    while pos < len(data):
        if pos + 28 > len(data):
            raise DataFileError(path, f"truncated AEDAT 3.1 file: {len(data) - pos} bytes at the end are less than "
                                      "a 28-byte packet header")
        e_type, = struct.unpack_from("<H", data, pos)
        e_size, = struct.unpack_from("<I", data, pos + 4)
        overflow, capacity = struct.unpack_from("<II", data, pos + 12)
        if pos + 28 + capacity * e_size > len(data):
            short = pos + 28 + capacity * e_size - len(data)
            raise DataFileError(path, f"truncated AEDAT 3.1 file: the packet at byte {pos} holds {capacity} events "
                                      f"of {e_size} bytes, but the file ends {short} bytes early")
        body = data[pos + 28:pos + 28 + capacity * e_size]
        pos += 28 + capacity * e_size
        if e_type != 1 or e_size < 8:
            continue
        n = len(body) // e_size
        words = np.frombuffer(body[:n * e_size], "<u4").reshape(n, e_size // 4)
        aer, ts = words[:, 0].astype(np.int64), words[:, 1].astype(np.int64)
        out["x"].append((aer >> 17) & 0x7FFF)
        out["y"].append((aer >> 2) & 0x7FFF)
        out["p"].append((aer >> 1) & 1)
        out["t"].append(ts | (int(overflow) << 31))
    if not out["t"]:
        raise DataFileError(path, "an AEDAT 3.1 file without polarity events")
    return {k: np.concatenate(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ splits
def official_cifar10_dvs_split() -> dict:
    """The official split: per class, the 1,000 names in lexicographic order, first 900 train, last 100 test."""
    split = {"train": {}, "test": {}}
    for c in CIFAR10_DVS_CLASSES:
        names = sorted(f"cifar10_{c}_{i}" for i in range(1000))
        split["train"][c], split["test"][c] = names[:900], names[900:]
    return split


def split_bytes(split: dict) -> bytes:
    return (json.dumps(split, indent=0, sort_keys=True) + "\n").encode()


def load_split(path: str | Path | None = None) -> dict:
    """The CIFAR10-DVS split file (default: the packaged official one, whose SHA-256 is checked)."""
    official = path is None
    path = Path(path) if path else SPLIT_DIR / "cifar10_dvs.json"
    raw = path.read_bytes()
    if official and hashlib.sha256(raw).hexdigest() != CIFAR10_DVS_SPLIT_SHA256:
        raise ValueError(f"{path} does not match its SHA-256 ({CIFAR10_DVS_SPLIT_SHA256}); reinstall the package")
    return json.loads(raw)


# ------------------------------------------------------------------------------------------------ samples
def _missing(name: str, data_dir: str, why: str) -> DatasetNotFoundError:
    if name == "cifar10_dvs":
        steps = (f"Download the ten class zips of CIFAR10-DVS (airplane.zip … truck.zip, figshare "
                 f"https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671) and extract each into {data_dir}, "
                 f"giving {data_dir}/airplane/cifar10_airplane_0.aedat … {data_dir}/truck/cifar10_truck_999.aedat.")
    else:
        steps = (f"Download DvsGesture.tar.gz (IBM, https://research.ibm.com/interactive/dvsgesture/) and extract it "
                 f"into {data_dir}, giving {data_dir}/DvsGesture/user01_fluorescent.aedat, "
                 f"…_labels.csv, trials_to_train.txt and trials_to_test.txt.")
    return DatasetNotFoundError(f"config.dataset.data_dir: {why}\n{steps}\nFrames are then built once, on the first "
                                f"run (or ahead of it: python -m sresformer_jax.data.dvs --dataset={name} "
                                f"--data_dir={data_dir} --T=<T>).")


def cifar10_dvs_samples(data_dir: str, split_file: str | None = None) -> dict[str, list]:
    """{"train"/"test": [("<class>/<name>", raw path, None, label)]} per the split file."""
    split = load_split(split_file)
    root = Path(data_dir)
    out, missing = {}, []
    for part in ("train", "test"):
        out[part] = []
        for label, c in enumerate(CIFAR10_DVS_CLASSES):
            for name in split[part].get(c, []):
                path = root / c / f"{name}.aedat"
                if not path.is_file():
                    missing.append(str(path))
                out[part].append((f"{c}/{name}", str(path), None, label))
    if missing:
        raise _missing("cifar10_dvs", data_dir, f"{len(missing)} raw files of the split are missing "
                       f"(first: {missing[0]})")
    return out


def dvs128_label_index(label: int) -> int:
    """Class c (0…10) → the index torchvision's DatasetFolder gives folder str(c) (string order)."""
    return sorted(str(i) for i in range(11)).index(str(label))


def dvs128_samples(data_dir: str) -> dict[str, list]:
    """{"train"/"test": [("<class-1>/<recording>_<k>", raw path, (start, end), label)]}, the k-th sample of that
    class in that recording, in DatasetFolder order."""
    root = Path(data_dir) / "DvsGesture"
    if not root.is_dir() and (Path(data_dir) / "trials_to_train.txt").is_file():
        root = Path(data_dir)
    out = {}
    for part in ("train", "test"):
        trials = root / f"trials_to_{part}.txt"
        if not trials.is_file():
            raise _missing("dvs128_gesture", data_dir, f"{trials} not found")
        out[part] = []
        for line in trials.read_text().splitlines():
            fname = os.path.splitext(line.strip())[0]
            if not fname:
                continue
            aedat, csv = root / f"{fname}.aedat", root / f"{fname}_labels.csv"
            for p in (aedat, csv):
                if not p.is_file():
                    raise _missing("dvs128_gesture", data_dir, f"{p} (listed in {trials.name}) not found")
            rows = np.loadtxt(csv, dtype=np.uint32, delimiter=",", skiprows=1, ndmin=2)
            count = [0] * 11
            for cls, lo, hi in rows[:, :3]:
                label = int(cls) - 1
                out[part].append((f"{label}/{fname}_{count[label]}", str(aedat), (int(lo), int(hi)), label))
                count[label] += 1
        # DatasetFolder order: folders '0', '1', '10', '2', … then file names sorted
        out[part] = sorted(((n, p, r, dvs128_label_index(lab)) for n, p, r, lab in out[part]),
                           key=lambda s: (s[3], s[0]))
    return out


# ----------------------------------------------------------------------------------------------- caching
READERS = {"cifar10_dvs": read_cifar10_dvs, "dvs128_gesture": read_aedat3}


def _integrate(name: str, path: str, window, T: int) -> np.ndarray:
    """Dataset ``name``'s raw file → events (those with start ≤ t < end if a ``window`` is given) → frames."""
    ev = READERS[name](path)
    if window is not None:
        keep = (ev["t"] >= window[0]) & (ev["t"] < window[1])
        ev = {k: v[keep] for k, v in ev.items()}
    return frames_by_number(ev["t"], ev["x"], ev["y"], ev["p"], T, *SENSOR)


def _write_npz(path: Path, frames: np.ndarray) -> None:
    dtype = np.uint16 if frames.max(initial=0) < 65536 else np.uint32
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, frames=frames.astype(dtype))
    os.replace(tmp, path)


def build_frame_cache(name: str, data_dir: str, T: int, samples: dict[str, list], workers: int = 0,
                      log=print, skip_corrupt: bool = False) -> tuple[Path, list[DataFileError]]:
    """Integrates every sample once into ``data_dir/frames_number_{T}/{part}/{name}.npz`` (each written
    atomically; only missing ones are built, so an interrupted build is completed next time); a manifest
    is written last. Safe against concurrent builders (file lock). A damaged raw file raises ``DataFileError``,
    or with ``skip_corrupt`` is left out (its sample gets no frames; it is tried again next time): returns the
    cache directory and those errors."""
    cache = Path(data_dir) / f"frames_number_{T}"
    manifest = cache / "manifest.json"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = []
        for part, items in samples.items():
            for n, p, w, _ in items:
                out = cache / part / f"{n}.npz"          # part/<class folder>/<sample>.npz
                if not out.is_file():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    todo.append((out, p, w))
        if not todo and manifest.is_file():
            return cache, []
        manifest.unlink(missing_ok=True)
        log(f"{name}: integrating {len(todo)} samples into {T} frames each → {cache} (once)")

        def one(job):
            out, p, w = job
            try:
                _write_npz(out, _integrate(name, p, w, T))
            except DataFileError as err:
                if not skip_corrupt:
                    raise
                return err
            return None

        skipped = []
        with ThreadPoolExecutor(max(workers, 1)) as pool:
            for i, err in enumerate(pool.map(one, todo)):
                if err is not None:
                    skipped.append(err)
                if (i + 1) % 500 == 0:
                    log(f"  {i + 1}/{len(todo)}")
        if not skipped:
            manifest.write_text(json.dumps({"dataset": name, "T": T, "split_by": "number",
                                            "counts": {k: len(v) for k, v in samples.items()}}))
    return cache, skipped


def load_frames(path: str | Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["frames"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataFileError(path, f"a damaged frame-cache file ({type(e).__name__}: {e}); delete it and it is "
                                  "rebuilt from its raw file") from None


# ----------------------------------------------------------------------------------------------- dataset
class EventData(StepIndexedData):
    """Float32 ``[B, T, size, size, 3]`` batches of cached frames (DVSAugment on training batches)."""

    def __init__(self, cache: Path, samples: dict[str, list], dataset_config, skipped=(), **kw):
        """``skipped``: the ``DataFileError`` of every sample the frame cache left out (``skip_corrupt``)."""
        bad = {e.path for e in skipped}
        samples = {k: [s for s in v if s[1] not in bad] for k, v in samples.items()}
        super().__init__(len(samples["train"]), len(samples["test"]), **kw)
        for err in skipped:
            self.skipped.note(err)
        self.cfg = dataset_config
        self.train = [(cache / "train" / f"{n}.npz", lab) for n, _, _, lab in samples["train"]]
        self.test = [(cache / "test" / f"{n}.npz", lab) for n, _, _, lab in samples["test"]]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.cfg.T, self.cfg.img_size, self.cfg.img_size, 3)

    def _load(self, items, rngs):
        x = [model_input(load_frames(items[r][0]), self.cfg.img_size, rng) for r, rng in rngs]
        return {"image": np.stack(x), "label": np.array([items[r][1] for r, _ in rngs], np.int32)}

    def load_train(self, rows, step, positions):
        augment = self.cfg.get("augment", "dvs") == "dvs"
        return self._load(self.train, [(r, self.example_rng(step, p) if augment else None)
                                       for r, p in zip(rows, positions)])

    def load_eval(self, rows):
        return self._load(self.test, [(r, None) for r in rows])


def dataset_samples(name: str, data_dir: str, split_file: str | None = None) -> dict[str, list]:
    if not data_dir:
        raise _missing(name, "DIR", "config.dataset.data_dir is not set; pass --config.dataset.data_dir=DIR.")
    if not Path(data_dir).is_dir():
        raise _missing(name, data_dir, f"{data_dir} does not exist.")
    return cifar10_dvs_samples(data_dir, split_file) if name == "cifar10_dvs" else dvs128_samples(data_dir)


def load_events(dataset_config, workers: int = 0, **kw) -> EventData:
    name, data_dir = dataset_config.name, dataset_config.get("data_dir")
    if dataset_config.get("split_by", "number") != "number":
        raise ValueError("config.dataset.split_by: only 'number' (the official integration) is implemented")
    samples = dataset_samples(name, data_dir, dataset_config.get("split_file"))
    cache, skipped = build_frame_cache(name, data_dir, dataset_config.T, samples, workers,
                                       skip_corrupt=dataset_config.get("skip_corrupt", False))
    return EventData(cache, samples, dataset_config, skipped, num_classes=10 if name == "cifar10_dvs" else 11,
                     workers=workers, **kw)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the frame cache of an event dataset ahead of training.")
    ap.add_argument("--dataset", required=True, choices=["cifar10_dvs", "dvs128_gesture"])
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--T", type=int, required=True, help="frames per sample (16 direct, 10 transfer)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)
    try:
        samples = dataset_samples(a.dataset, a.data_dir)
    except DatasetNotFoundError as e:
        raise SystemExit(f"error: {e}")
    try:
        print(build_frame_cache(a.dataset, a.data_dir, a.T, samples, a.workers)[0])
    except DataFileError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
