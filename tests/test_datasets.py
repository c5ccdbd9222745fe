"""The real dataset loaders on tiny datasets written in the real on-disk formats (made by the tests): class
folders of JPEGs, TFDS records (through ``tfds.testing.mock_data``), CIFAR10-DVS AEDAT 2.0 and DVS128
Gesture AEDAT 3.1 files; the timm RandAugment definition; the official preprocessing; the CIFAR10-DVS split."""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from conftest import run
from sresformer_jax.data import DatasetNotFoundError, dvs, get_dataset
from sresformer_jax.data.events import frames_by_number
from sresformer_jax.data.randaugment import (INCREASING_TRANSFORMS, TRANSFORMS, apply_op, level_to_arg,
                                             parse_randaugment)
from sresformer_jax.data.transforms import eval_image, random_resized_crop_box, train_image

ROOT = Path(__file__).resolve().parent.parent


def config(name: str, **dataset):
    import importlib
    c = importlib.import_module(f"sresformer_jax.configs.{name}").get_config()
    c.dataset.update(dataset)
    return c


# ------------------------------------------------------------------------------------------ RandAugment
def test_randaugment_policies_parse_like_timm():
    ra = parse_randaugment("rand-m7-mstd0.5-inc1", mean=(0.485, 0.456, 0.406))
    assert (ra.magnitude, ra.num_layers, ra.magnitude_std, ra.prob, ra.magnitude_max) == (7, 2, 0.5, 0.5, 10)
    assert ra.fill == (124, 116, 104)                    # timm: round(255 · mean)
    assert ra.ops == ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                      "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                      "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                      "TranslateYRel")                    # timm's _RAND_INCREASING_TRANSFORMS
    assert parse_randaugment("rand-m9-n3-mstd0.5-inc1").num_layers == 3
    assert parse_randaugment("rand-m9-n1-mstd0.4-inc1").magnitude_std == 0.4
    plain = parse_randaugment("rand-m9")
    assert plain.ops[4:11] == ("Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness",
                               "Sharpness") and plain.magnitude_std == 0
    assert parse_randaugment("rand-mstd101").magnitude_std == math.inf
    for bad in ("auto-m9", "rand-q3", "rand-m"):
        with pytest.raises(ValueError, match="RandAugment"):
            parse_randaugment(bad)


class _Sign:
    """An rng whose random() decides timm's _randomly_negate: > 0.5 negates."""
    def __init__(self, negate):
        self.v = 0.9 if negate else 0.1

    def random(self):
        return self.v


@pytest.mark.parametrize("m", [0.0, 3.0, 7.0, 9.0, 10.0])
def test_randaugment_magnitudes_follow_timm_level_to_arg(m):
    lv = m / 10
    keep, neg = _Sign(False), _Sign(True)
    assert level_to_arg("Rotate", m, keep) == (30 * lv,) and level_to_arg("Rotate", m, neg) == (-30 * lv,)
    assert level_to_arg("ShearX", m, neg) == (-0.3 * lv,)
    assert level_to_arg("TranslateYRel", m, keep) == (0.45 * lv,)
    assert level_to_arg("Posterize", m, keep) == (int(4 * lv),)
    assert level_to_arg("PosterizeIncreasing", m, keep) == (4 - int(4 * lv),)
    assert level_to_arg("Solarize", m, keep) == (min(256, int(256 * lv)),)
    assert level_to_arg("SolarizeIncreasing", m, keep) == (256 - min(256, int(256 * lv)),)
    assert level_to_arg("SolarizeAdd", m, keep) == (min(128, int(110 * lv)),)
    assert level_to_arg("Color", m, keep) == (1.8 * lv + 0.1,)
    assert level_to_arg("ContrastIncreasing", m, neg) == (max(0.1, 1 - 0.9 * lv),)
    assert level_to_arg("SharpnessIncreasing", m, keep) == (1 + 0.9 * lv,)
    assert level_to_arg("Equalize", m, keep) == ()


@pytest.mark.parametrize("name", sorted(set(TRANSFORMS) | set(INCREASING_TRANSFORMS)))
@pytest.mark.parametrize("magnitude", [0.0, 10.0])
def test_every_randaugment_op_runs_at_the_extreme_magnitudes(name, magnitude):
    """Magnitude 10 (drawn ~2 % of the time by mstd0.5 policies at m9) makes PosterizeIncreasing keep 4 − 4 = 0
    bits: the black image older Pillow returned there (every bit masked), not the error Pillow 13 raises."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    args = level_to_arg(name, magnitude, rng)
    out = apply_op(img, name, args, (124, 116, 104), Image.Resampling.BICUBIC)
    assert out.size == img.size and out.mode == img.mode
    if name == "PosterizeIncreasing" and magnitude == 10.0:
        assert args == (0,) and not np.asarray(out).any()


def test_every_shipped_randaugment_policy_runs_over_thousands_of_images():
    """Each config's policy on 3,000 images (seeded), magnitudes drawn as in training, clipped to [0, 10]."""
    from sresformer_jax import configs
    policies = set()
    for name in configs.names():
        module = importlib.import_module(f"sresformer_jax.configs.{name}")
        for arg in (("ti", "s", "m", "l") if name == "imagenet" else (None,)):
            c = module.get_config(arg)
            if c.dataset.get("randaugment"):
                policies.add((c.dataset.randaugment, tuple(c.dataset.mean)))
    assert {p for p, _ in policies} >= {"rand-m7-mstd0.5-inc1", "rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5-inc1",
                                         "rand-m7-n1-mstd0.5-inc1", "rand-m9-n1-mstd0.4-inc1"}
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for policy, mean in sorted(policies):
        ra = parse_randaugment(policy, mean=mean)
        for i in range(3000):
            out = ra(base, np.random.default_rng([7, i]))
            assert out.size == base.size, policy


def test_randaugment_is_deterministic_and_keeps_size_and_range():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), np.uint8))
    ra = parse_randaugment("rand-m9-n3-mstd0.5-inc1", mean=(0.5, 0.5, 0.5))
    outs = [np.asarray(ra(img, np.random.default_rng(s))) for s in (1, 1, 2)]
    assert np.array_equal(outs[0], outs[1]) and outs[0].shape == (20, 28, 3) and outs[0].dtype == np.uint8
    changed = sum(not np.array_equal(np.asarray(ra(img, np.random.default_rng(s))), np.asarray(img))
                  for s in range(20))
    assert changed >= 10                                 # 3 ops at p 0.5: most images change


# ------------------------------------------------------------------------------------------ transforms
def test_random_resized_crop_box_respects_scale_ratio_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 50, 40)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
    # scale = ratio = 1 (CIFAR): the whole image
    assert random_resized_crop_box(rng, 32, 32, (1, 1), (1, 1)) == (0, 0, 32, 32)
    # impossible ratio → timm's fallback: whole width, height from the ratio bound, centred
    assert random_resized_crop_box(rng, 100, 10, (1, 1), (1, 1)) == (0, 45, 10, 10)


def test_official_train_and_eval_transforms():
    cfg = config("imagenet").dataset
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    ra = parse_randaugment(cfg.randaugment, tuple(cfg.mean))
    a = train_image(img, np.random.default_rng(3), cfg, ra)
    b = train_image(img, np.random.default_rng(3), cfg, ra)
    assert a.shape == (224, 224, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    lo = (0 - np.array(cfg.mean)) / np.array(cfg.std)
    hi = (1 - np.array(cfg.mean)) / np.array(cfg.std)
    assert np.all(a >= lo - 1e-5) and np.all(a <= hi + 1e-5)
    # eval: shorter side 300 → 235 (bicubic), centre 224
    e = eval_image(img, cfg)
    ref = img.resize((313, 235), Image.Resampling.BICUBIC).crop((44, 6, 268, 230))
    np.testing.assert_allclose(e, (np.asarray(ref) / 255 - cfg.mean) / cfg.std, atol=1e-5)
    # CIFAR: whole image, resized to the input size (a 32² image stays as is)
    c = config("cifar10").dataset
    small = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
    np.testing.assert_allclose(eval_image(small, c), (np.asarray(small) / 255 - c.mean) / c.std, atol=1e-5)


# --------------------------------------------------------------------------------- static image loaders
def tiny_imagenet_config(data_dir, **kw):
    c = config("imagenet", data_dir=str(data_dir), img_size=32, **kw)
    c.model.update(img_size=32, num_classes=3)
    c.batch_size, c.eval_batch_size = 4, 4
    return c


def test_class_folder_loader_order_sharding_and_determinism(tmp_path):
    synthetic.write_image_folder(tmp_path, classes=3, per_class=(4, 2))
    c = tiny_imagenet_config(tmp_path, workers=0)
    d = get_dataset(c)
    assert (d.num_train, d.num_test, d.num_classes, d.steps_per_epoch) == (12, 6, 3, 3)
    assert [s[1] for s in d.train_source.samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert d.train_source.samples[0][0].endswith("train/n00000000/img_0.JPEG")
    b = d.train_batch(4)
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    # threads (grain) give the same batches in the same order as the serial path; resume at any step
    c.dataset.workers = 2
    threaded = get_dataset(c).train_iterator(4)
    assert all(np.array_equal(next(threaded)["image"], d.train_batch(s)["image"]) for s in (4, 5, 6))
    # two hosts' halves make up the one-host batch exactly
    halves = [get_dataset(c, i, 2).train_batch(4) for i in (0, 1)]
    assert np.array_equal(np.concatenate([h["image"] for h in halves]), b["image"])
    ev = list(d.eval_batches())
    assert [x["mask"].sum() for x in ev] == [4, 2] and ev[0]["image"].shape == (4, 32, 32, 3)


def test_the_quickstart_digits_are_scikit_learns_split_stratified():
    from sklearn.datasets import load_digits
    from sresformer_jax.data.digits import _sklearn_digits
    x, y = _sklearn_digits()
    d = load_digits()
    np.testing.assert_array_equal(x, (d.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, d.target)
    data = get_dataset(config("quickstart"))
    assert (len(data.train_y), len(data.test_y)) == (1438, 359)
    assert np.bincount(data.test_y).tolist() == [round(n * 0.2) for n in np.bincount(d.target)]     # stratified


@pytest.mark.parametrize("name,cfg,splits,classes,size", [
    ("cifar10", "cifar10", ("train", "test"), 10, 32),
    ("imagenet2012", "imagenet", ("train", "validation"), 1000, 224)])
def test_tfds_records_through_mock_data(tmp_path, name, cfg, splits, classes, size):
    import tensorflow_datasets as tfds
    synthetic.fake_tfds_layout(tmp_path, name, splits)
    c = config(cfg, workers=0)
    c.data_dir = str(tmp_path)                       # the --config.data_dir shorthand
    c.batch_size, c.eval_batch_size = 4, 4
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        d = get_dataset(c)
        b, ev = d.train_batch(1), list(d.eval_batches())
    assert (d.num_train, d.num_classes, d.input_shape) == (10, classes, (size, size, 3))
    assert b["image"].shape == (4, size, size, 3) and b["label"].dtype == np.int32
    assert sum(x["mask"].sum() for x in ev) == 10


def test_missing_or_wrong_static_datasets_say_how_to_prepare(tmp_path):
    c = config("cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="tfds build cifar10 .*--file_format=array_record"):
        get_dataset(c)
    with pytest.raises(DatasetNotFoundError, match="data_dir is not set"):
        get_dataset(config("cifar10"))
    d = tmp_path / "cifar10" / "3.0.2"
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    (d / "cifar10-train.tfrecord-00000-of-00001").touch()
    with pytest.raises(DatasetNotFoundError, match="tfrecord format"):
        get_dataset(config("cifar10", data_dir=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match="downloads/manual"):
        get_dataset(config("imagenet", data_dir=str(tmp_path)))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="different class folders"):
        get_dataset(config("imagenet", data_dir=str(tmp_path)))


# ---------------------------------------------------------------------------------------------- events
def test_cifar10_dvs_aedat2_read_by_tonic_decodes_like_spikingjelly(tmp_path):
    written = synthetic.write_cifar10_dvs(tmp_path, per_class=1, classes=("cat",))
    ev = dvs.read_cifar10_dvs(tmp_path / "cat" / "cifar10_cat_0.aedat")
    for k in "txyp":
        np.testing.assert_array_equal(ev[k], written["cifar10_cat_0"][k])


def test_aedat3_reader_skips_other_packets_and_applies_the_overflow(tmp_path):
    rng = np.random.default_rng(0)
    ev = synthetic.random_events(rng, 250, t0=(1 << 31) + 10)             # timestamps past 2^31
    synthetic.write_aedat3(tmp_path / "a.aedat", ev, packet=64)
    got = dvs.read_aedat3(tmp_path / "a.aedat")
    for k in "txyp":
        np.testing.assert_array_equal(got[k], ev[k])


def test_cifar10_dvs_split_file_is_the_official_one_and_hashed():
    path = Path(dvs.__file__).parent / "splits" / "cifar10_dvs.json"
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == dvs.CIFAR10_DVS_SPLIT_SHA256
    assert raw == dvs.split_bytes(dvs.official_cifar10_dvs_split())
    split = json.loads(raw)
    for c in dvs.CIFAR10_DVS_CLASSES:
        train, test = split["train"][c], split["test"][c]
        assert len(train) == 900 and len(test) == 100 and not set(train) & set(test)
        assert train[:4] == [f"cifar10_{c}_{i}" for i in ("0", "1", "10", "100")]   # lexicographic
        assert test[-1] == f"cifar10_{c}_999" and test[0] == f"cifar10_{c}_909"


def test_dvs128_labels_follow_datasetfolder_string_order():
    assert [dvs.dvs128_label_index(c) for c in range(11)] == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 2]


def tiny_split(path: Path) -> str:
    split = {"train": {c: [f"cifar10_{c}_0", f"cifar10_{c}_1"] for c in dvs.CIFAR10_DVS_CLASSES},
             "test": {c: [f"cifar10_{c}_2"] for c in dvs.CIFAR10_DVS_CLASSES}}
    path.write_text(json.dumps(split))
    return str(path)


def test_event_frames_are_cached_once_and_match_the_events(tmp_path):
    written = synthetic.write_cifar10_dvs(tmp_path / "raw", per_class=3)
    c = config("cifar10_dvs", data_dir=str(tmp_path / "raw"), split_file=tiny_split(tmp_path / "s.json"),
               T=4, img_size=32, workers=0)
    c.batch_size, c.eval_batch_size = 4, 4
    d = get_dataset(c)
    cache = tmp_path / "raw" / "frames_number_4"
    f = cache / "train" / "cat" / "cifar10_cat_1.npz"
    ev = written["cifar10_cat_1"]
    np.testing.assert_array_equal(dvs.load_frames(f), frames_by_number(ev["t"], ev["x"], ev["y"], ev["p"], 4,
                                                                       128, 128))
    with np.load(f, allow_pickle=False) as z:                   # no pickles in the cache
        assert z["frames"].dtype == np.uint16
    assert (d.num_train, d.num_test, d.input_shape) == (20, 10, (4, 32, 32, 3))
    b = d.train_batch(2)
    assert b["image"].shape == (4, 4, 32, 32, 3) and np.array_equal(b["image"], d.train_batch(2)["image"])
    assert np.all(b["image"] >= 0)
    # cached: a second load builds nothing; a lost file (interrupted build) is rebuilt
    mtime = f.stat().st_mtime_ns
    get_dataset(c)
    assert f.stat().st_mtime_ns == mtime
    f.unlink()
    get_dataset(c)
    assert f.is_file()


def test_dvs128_gesture_samples_cut_by_the_csv_windows(tmp_path):
    rec = synthetic.write_dvs128_gesture(tmp_path)
    c = config("dvs128_gesture", data_dir=str(tmp_path), T=4, img_size=32, workers=0)
    c.batch_size, c.eval_batch_size = 4, 4
    d = get_dataset(c)
    assert (d.num_train, d.num_test, d.num_classes) == (8, 4, 11)
    ev, rows = rec["user03_lab"]
    g, lo, hi = rows[2]                                             # class 11 → folder '10'
    keep = (ev["t"] >= lo) & (ev["t"] < hi)
    want = frames_by_number(*(ev[k][keep] for k in "txyp"), 4, 128, 128)
    got = dvs.load_frames(tmp_path / "frames_number_4" / "test" / f"{g - 1}" / "user03_lab_0.npz")
    np.testing.assert_array_equal(got, want)
    assert sorted(lab for _, lab in d.test) == [0, 1, 2, 3]


def test_missing_event_datasets_say_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="airplane.zip"):
        get_dataset(config("cifar10_dvs", data_dir=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match="DvsGesture.tar.gz"):
        get_dataset(config("dvs128_gesture", data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------ train.py / eval.py end to end
TINY_MODEL = ["--config.model.blocks=(1,1,1)", "--config.model.planes=(16,32,64)",
              "--config.model.num_heads=(1,2,4)", "--config.model.group_size=16", "--config.model.img_size=32",
              "--config.dataset.img_size=32", "--config.progress_bar=false", "--config.total_steps=2",
              "--config.log_every_steps=1", "--config.batch_size=4", "--config.eval_batch_size=4"]


@pytest.mark.slow
def test_imagenet_folders_train_eval_then_transfer_to_dvs128(tmp_path):
    """ImageNet recipe from a class-folder tree → eval.py → the DVS128 transfer recipe from raw AEDAT files,
    initialised from that ImageNet run (fresh classifier)."""
    synthetic.write_image_folder(tmp_path / "inet", classes=3, per_class=(4, 2))
    synthetic.write_dvs128_gesture(tmp_path / "gesture")
    run(["train.py", "--config=configs/imagenet.py:s", f"--workdir={tmp_path / 'in'}", *TINY_MODEL,
         f"--config.dataset.data_dir={tmp_path / 'inet'}", "--config.model.num_classes=3", "--config.model.T=2"])
    p = run(["eval.py", f"--workdir={tmp_path / 'in'}"])
    assert "images         6" in p.stdout
    p = run(["train.py", "--config=configs/transfer_dvs128_gesture.py", f"--workdir={tmp_path / 'dvs'}",
             *TINY_MODEL, f"--config.dataset.data_dir={tmp_path / 'gesture'}", "--config.dataset.T=2",
             "--config.model.T=2", f"--config.init_from={tmp_path / 'in'}"])
    assert "training spikingresformer_s" in p.stdout + p.stderr
    recs = [json.loads(x) for x in (tmp_path / "dvs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["count"] for r in recs if r["split"] == "test"] == [4]


@pytest.mark.parametrize("cfg,needle", [("configs/cifar10.py", "tfds build cifar10"),
                                        ("configs/imagenet.py:ti", "ILSVRC2012_img_train.tar"),
                                        ("configs/cifar10_dvs.py", "airplane.zip"),
                                        ("configs/transfer_dvs128_gesture.py", "DvsGesture.tar.gz")])
def test_train_py_on_a_missing_dataset_stops_before_compiling_with_the_steps(tmp_path, capsys, cfg, needle):
    """In-process (``cli.train(argv)``): the preparation steps, exit status 1, and nothing written to the workdir."""
    from sresformer_jax import cli
    rc = cli.train(["train.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}",
                    f"--config.dataset.data_dir={tmp_path / 'none'}", "--config.init_from=x"])
    out = capsys.readouterr()
    assert rc == 1 and "DatasetNotFoundError" in out.err and needle in out.err
    assert "training spikingresformer" not in out.out + out.err and not (tmp_path / "w").exists()
