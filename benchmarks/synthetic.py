"""Tiny datasets written in the real on-disk formats, for the tests and the input benchmark.

* ``write_image_folder``: ``root/{train,val}/<class>/<i>.JPEG`` (random-noise JPEGs of a given size);
* ``write_aedat2`` / ``write_cifar10_dvs``: CIFAR10-DVS AEDAT 2.0 files (jAER header, big-endian
  address/timestamp pairs) under ``root/<class>/cifar10_<class>_<i>.aedat``;
* ``write_aedat3`` / ``write_dvs128_gesture``: DVS128 Gesture AEDAT 3.1 files (polarity packets, plus one
  special-event packet that readers must skip), ``_labels.csv`` and ``trials_to_{train,test}.txt``.

Event encodings are the inverse of the decoders in ``sresformer_jax/data/dvs.py``, written from the format descriptions.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(root: str | Path, classes: int = 3, per_class: tuple[int, int] = (4, 2),
                       size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A class-folder tree of JPEGs (``size`` = (width, height), varied by ±25 % per image)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(s * rng.uniform(0.75, 1.25)) for s in size)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img_{i}.JPEG", quality=90)
    return root


def random_events(rng: np.random.Generator, n: int, t0: int = 0, duration: int = 1_000_000) -> dict:
    return {"t": np.sort(rng.integers(t0, t0 + duration, n)).astype(np.int64),
            "x": rng.integers(0, 128, n), "y": rng.integers(0, 128, n), "p": rng.integers(0, 2, n)}


def write_aedat2(path: str | Path, ev: dict) -> None:
    """CIFAR10-DVS encoding: x_raw = 127 − y, y_raw = 127 − x, p_raw = 1 − p packed into the address
    (x_raw << 1 | y_raw << 8 | p_raw), big-endian (address, timestamp) uint32 pairs after a '#' header."""
    x_raw, y_raw, p_raw = 127 - np.asarray(ev["y"]), 127 - np.asarray(ev["x"]), 1 - np.asarray(ev["p"])
    addr = (x_raw << 1) | (y_raw << 8) | p_raw
    data = np.stack([addr, ev["t"]], 1).astype(">u4")
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
                b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
                b"# Timestamps tick is 1 us\r\n")
        f.write(data.tobytes())


def write_cifar10_dvs(root: str | Path, per_class: int = 3, classes=None, events: int = 300, seed: int = 0
                      ) -> dict:
    """``root/<class>/cifar10_<class>_<i>.aedat``; returns {name: events}."""
    from sresformer_jax.data.dvs import CIFAR10_DVS_CLASSES

    rng = np.random.default_rng(seed)
    out = {}
    for c in classes or CIFAR10_DVS_CLASSES:
        (Path(root) / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"cifar10_{c}_{i}"
            ev = random_events(rng, int(events + rng.integers(0, 50)))
            write_aedat2(Path(root) / c / f"{name}.aedat", ev)
            out[name] = ev
    return out


def write_aedat3(path: str | Path, ev: dict, packet: int = 100) -> None:
    """AEDAT 3.1: header lines, then packets of polarity events (type 1, 8-byte events: data, ts), the
    timestamp's bit 31+ in the packet's overflow field; a special-event packet (type 0) first."""
    t = np.asarray(ev["t"], np.int64)
    data = (np.asarray(ev["x"]) << 17) | (np.asarray(ev["y"]) << 2) | (np.asarray(ev["p"]) << 1) | 1
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n")
        special = np.array([[7 << 1 | 1, 0]], "<u4")           # a timestamp-reset style special event
        f.write(struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + special.tobytes())
        for lo in range(0, len(t), packet):
            tt, dd = t[lo:lo + packet], data[lo:lo + packet]
            overflow = int(tt[0] >> 31)
            if np.any((tt >> 31) != overflow):
                raise ValueError("a packet may not straddle a timestamp overflow")
            words = np.stack([dd, tt & 0x7FFFFFFF], 1).astype("<u4")
            f.write(struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, len(tt), len(tt), len(tt)) + words.tobytes())


def write_dvs128_gesture(root: str | Path, users=(("user01_fluorescent", "train"), ("user02_led", "train"),
                                                   ("user03_lab", "test")), gestures=(1, 2, 11, 3),
                         events_per_gesture: int = 400, seed: int = 0) -> dict:
    """``root/DvsGesture/``: one recording per user with the given gesture classes (1…11) in sequence,
    its labels csv, and the trial lists. Returns {recording: (events, [(class, start, end)])}."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "DvsGesture"
    d.mkdir(parents=True, exist_ok=True)
    out, lists = {}, {"train": [], "test": []}
    for user, part in users:
        chunks, rows, t0 = [], [], 5_000_000
        for g in gestures:
            ev = random_events(rng, events_per_gesture, t0, 2_000_000)
            chunks.append(ev)
            rows.append((g, t0 + 100_000, t0 + 1_900_000))
            t0 += 2_500_000
        ev = {k: np.concatenate([c[k] for c in chunks]) for k in "txyp"}
        write_aedat3(d / f"{user}.aedat", ev)
        with open(d / f"{user}_labels.csv", "w") as f:
            f.write("class,startTime_usec,endTime_usec\n")
            f.writelines(f"{g},{lo},{hi}\n" for g, lo, hi in rows)
        lists[part].append(f"{user}.aedat")
        out[user] = (ev, rows)
    for part, names in lists.items():
        (d / f"trials_to_{part}.txt").write_text("\n".join(names) + "\n")
    return out


def fake_tfds_layout(data_dir: str | Path, name: str, splits=("train", "test"), version: str = "3.0.2") -> Path:
    """The file names of a TFDS array_record build (empty files) — for tests that read the records through
    ``tfds.testing.mock_data``."""
    d = Path(data_dir) / name / version
    d.mkdir(parents=True, exist_ok=True)
    (d / "dataset_info.json").write_text("{}")
    for s in splits:
        (d / f"{name}-{s}.array_record-00000-of-00001").touch()
    return d
