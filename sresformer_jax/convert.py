"""Convert official SpikingResformer checkpoints (PyTorch ``.pth``) to this project's checkpoints and back.

    python -m sresformer_jax.convert from-official --variant spikingresformer_ti --pth ti.pth --out ckpt/ti
    python -m sresformer_jax.convert to-official --checkpoint ckpt/ti --out ti_again.pth

Neither direction needs torch: ``.pth`` files are read and written by ``sresformer_jax.pth`` (which refuses
pickles that could run code). Run ``python -m sresformer_jax.convert --help`` for all options.

Exit status: 0 on success, 2 when the input does not fit (missing / unexpected / mis-shaped weights, another
variant's weights, an unsafe or unreadable file, an existing output); in those cases nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

# The settings the released checkpoints were trained with, where they differ from the official
# constructors' defaults (num_classes is read from the weights): CIFAR at 32×32, DVS128 Gesture at 64×64, T=16.
RELEASED_SETTINGS: dict[str, dict[str, int]] = {
    "spikingresformer_cifar": {"img_size": 32},
    "spikingresformer_dvsg": {"img_size": 64, "T": 16},
}

_EPILOG_FROM = """\
examples:
  # a released ImageNet checkpoint (a dict with a 'model' key) → an orbax checkpoint directory
  python -m sresformer_jax.convert from-official --variant spikingresformer_ti --pth spikingresformer_ti.pth --out ckpt/ti
  # CIFAR-10 weights (num_classes is read from classifier.weight; img_size 32 is the released default)
  python -m sresformer_jax.convert from-official --variant spikingresformer_cifar --pth cifar10.pth --out ckpt/cifar10
  # weights exported to .npz (official state-dict names as keys) by someone with torch
  python -m sresformer_jax.convert from-official --variant spikingresformer_s --pth s.npz --out ckpt/s

then, in Python:
  model, variables = sresformer_jax.checkpoint.load_model("ckpt/ti")
  logits = model.apply(variables, x, train=False)     # x: [B, H, W, C] (NHWC); logits: [T, B, classes]
"""

_EPILOG_TO = """\
examples:
  python -m sresformer_jax.convert to-official --checkpoint ckpt/ti --out ti.pth   # {'model': state_dict}
  python -m sresformer_jax.convert to-official --checkpoint ckpt/ti --out ti.npz   # flat official names

in PyTorch (official repository):
  model.load_state_dict(torch.load("ti.pth", weights_only=True)["model"])
"""


class ConversionError(Exception):
    """A problem with the user's input: printed as ``error: …`` lines, exit status 2, nothing written."""

    def __init__(self, message: str, details: Sequence[str] = (), hint: str | None = None):
        super().__init__(message)
        self.details = list(details)
        self.hint = hint


# ---------------------------------------------------------------------------------------------------------
# from-official
# ---------------------------------------------------------------------------------------------------------

def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def read_state_dict(path: Path, key: str | None) -> tuple[dict[str, np.ndarray], str]:
    """The official state dict in ``path`` (``.pth`` or ``.npz``) and a description of where it was found."""
    if not path.is_file():
        raise ConversionError(f"no such file: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if key is not None:
                    prefix = key.rstrip("/") + "/"
                    names = [n for n in names if n.startswith(prefix)]
                    if not names:
                        raise ConversionError(f"{path} has no arrays named '{prefix}<name>' (--key {key})")
                    sd = {n[len(prefix):]: z[n] for n in names}
                else:
                    sd = {n: z[n] for n in names}
        except (ValueError, OSError) as e:
            raise ConversionError(f"cannot read {path} as .npz: {e}") from None
        return sd, f"{path}" + (f" (arrays '{key}/…')" if key else "")

    from .pth import load_pth
    try:
        obj = load_pth(path)
    except ValueError as e:  # UnsafeCheckpointError, CheckpointFormatError
        raise ConversionError(str(e)) from None
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a dict with a state dict")
    if key is not None:
        if key not in obj:
            raise ConversionError(f"{path} has no key {key!r}; its top-level keys are {sorted(map(str, obj))}")
        sd, where = obj[key], f"{path} ['{key}']"
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd, where = obj["model"], f"{path} ['model']"
    elif obj and all(_is_array(v) for v in obj.values()):
        sd, where = obj, f"{path} (a bare state dict)"
    else:
        raise ConversionError(f"found no state dict in {path}: it is neither a dict with a 'model' entry nor a "
                              f"flat dict of tensors; its top-level keys are {sorted(map(str, obj))}; "
                              "choose the entry with --key")
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{where} is a {type(sd).__name__}, not a state dict")
    not_tensors = sorted(str(k) for k, v in sd.items() if not _is_array(v))
    if not_tensors:
        raise ConversionError(f"{where} is not a state dict: these entries are not tensors",
                              [f"not a tensor: {k}" for k in not_tensors])
    return dict(sd), where


def _strip_prefix(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
    """Drops a ``module.`` prefix that DataParallel / DDP wrappers add to every name."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, None


def guess_variant(sd: Mapping[str, np.ndarray]) -> str | None:
    """The registered variant whose widths, stem and neuron these official weights have, if any."""
    from .model import VARIANTS
    try:
        stem = sd["prologue.0.weight"].shape
        planes = (stem[0], sd["layers.1.0.conv.weight"].shape[0], sd["layers.2.0.conv.weight"].shape[0])
    except (KeyError, IndexError, AttributeError):
        return None
    prologue = "default" if stem[-1] == 7 else "conv3x3"
    activation = "PLIF" if any(k.endswith(".w") for k in sd) else "LIF"
    hits = [n for n, v in VARIANTS.items()
            if tuple(v["planes"]) == planes and v["prologue"] == prologue and v["activation"] == activation]
    return hits[0] if len(hits) == 1 else None


def from_official_cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    sd, where = read_state_dict(Path(args.pth), args.key)
    sd, stripped = _strip_prefix(sd)

    import jax
    import jax.numpy as jnp

    from . import __version__
    from .checkpoint import save_model
    from .interop import from_official
    from .trees import MismatchError
    from .model import SpikingResformer, check_calibrated, config_for, count_params

    notes = []
    if stripped:
        notes.append(f"stripped the '{stripped}' prefix from every name")
    overrides: dict[str, Any] = {}
    w = sd.get("classifier.weight")
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    elif w is not None and np.ndim(w) == 2:
        overrides["num_classes"] = int(np.shape(w)[0])
        notes.append(f"num_classes={overrides['num_classes']} (read from classifier.weight)")
    released = RELEASED_SETTINGS.get(args.variant, {})
    for name, value in (("img_size", args.img_size), ("T", args.T)):
        if value is not None:
            overrides[name] = value
        elif name in released:
            overrides[name] = released[name]
            notes.append(f"{name}={released[name]} (the released checkpoint's setting; override with "
                         f"--{name.replace('_', '-')})")
    if args.dvs:
        overrides["dvs"] = True
    try:
        cfg = config_for(args.variant, **overrides)
        SpikingResformer.from_config(cfg, conv_impl="xla")              # the config's own checks
    except ValueError as e:
        raise ConversionError(str(e)) from None

    dtype = jnp.dtype(args.dtype)
    if dtype == jnp.float64:
        jax.config.update("jax_enable_x64", True)
    try:
        model, variables = from_official(cfg, sd, dtype=dtype)
    except MismatchError as e:                       # every missing, unexpected or mis-shaped name
        guess = guess_variant(sd)
        hint = f"these weights look like {guess}: try --variant {guess}" if guess and guess != args.variant else None
        raise ConversionError(
            f"the weights in {where} do not fit {args.variant} (planes={cfg['planes']}, stem={cfg['prologue']}, "
            f"neuron={cfg['activation']}, num_classes={cfg['num_classes']}): "
            f"{len(e.lines)} problem{'s' * (len(e.lines) != 1)}", e.lines, hint) from None

    n_params = count_params(variables["params"])
    dropped = sorted(k for k in sd if k.endswith("num_batches_tracked"))
    meta = {"converted_by": f"sresformer_jax {__version__} (python -m sresformer_jax.convert from-official)",
            "variant": args.variant, "source": str(Path(args.pth).absolute()), "source_entry": where,
            "num_params": n_params, "dtype": str(dtype), "notes": notes}
    try:
        written = save_model(out, variables, model.config(), meta, overwrite=args.force)
    except FileExistsError as e:
        raise ConversionError(str(e)) from None

    try:
        check_calibrated(variables)
        calibrated = True
    except Exception:  # noqa: BLE001 - FiringRatesNotSetError
        calibrated = False
    print(f"converted {args.variant}: {n_params:,} parameters ({dtype}), {len(sd) - len(dropped)} tensors "
          f"from {where}" + (f" ({len(dropped)} num_batches_tracked dropped)" if dropped else ""))
    c = model.config()
    print(f"  config: num_classes={c['num_classes']}, img_size={c['img_size']}, T={c['T']}, "
          f"planes={c['planes']}, neuron={c['activation']}" + (", dvs input" if c.get("dvs") else ""))
    for n in notes:
        print(f"  note: {n}")
    if not calibrated:
        print("  note: the DSSA firing-rate buffers are zero (weights from an untrained model?): evaluation "
              "would divide by zero; run sresformer_jax.calibrate(model, variables, x) on a batch first")
    print(f"  wrote: {written}")
    print("use it:\n"
          "  import sresformer_jax.checkpoint\n"
          f"  model, variables = sresformer_jax.checkpoint.load_model({str(written)!r})\n"
          "  logits = model.apply(variables, x, train=False)   "
          + ("# x: [B, T, H, W, C]" if c.get("dvs") else "# x: [B, H, W, C] (NHWC)") + ", logits: [T, B, classes]")
    return 0


# ---------------------------------------------------------------------------------------------------------
# to-official
# ---------------------------------------------------------------------------------------------------------

def to_official_cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".pth", ".pt", ".npz", ".tar"):
        raise ConversionError(f"--out must end in .pth, .pt, .tar or .npz, got {out.name}")
    if out.is_dir():
        raise ConversionError(f"{out} is a directory; --out is a file (.pth or .npz)")
    if out.exists() and not args.force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")

    from .checkpoint import load_model
    from .interop import check_official_neuron, to_official
    from .model import count_params
    from .pth import save_pth

    try:
        model, variables = load_model(args.checkpoint)
        check_official_neuron(model.config())
    except (FileNotFoundError, ValueError) as e:
        raise ConversionError(str(e)) from None
    sd = to_official(variables)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            np.savez(tmp, **sd)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        layout = "flat .npz of official state-dict names"
    else:
        save_pth({"model": sd}, out)
        layout = "{'model': state_dict}, readable by torch.load(path, weights_only=True)"
    print(f"exported {len(sd)} tensors ({count_params(variables['params']):,} parameters) of "
          f"{args.checkpoint} to {out.absolute()} ({layout})")
    if out.suffix != ".npz":
        print("use it (official repository):\n"
              f"  model.load_state_dict(torch.load({str(out)!r}, weights_only=True)['model'])")
    return 0


# ---------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .model import VARIANTS  # cheap: model.py imports flax but builds nothing

    p = argparse.ArgumentParser(
        prog="python -m sresformer_jax.convert",
        description="Convert official SpikingResformer PyTorch checkpoints to sresformer_jax (orbax) checkpoints "
                    "and back. No torch needed; .pth pickles that could run code are refused.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run '%(prog)s from-official --help' or '%(prog)s to-official --help' for details and examples")
    sub = p.add_subparsers(dest="command", required=True, metavar="{from-official,to-official}")

    f = sub.add_parser("from-official", help="official .pth (or .npz) → orbax checkpoint directory",
                       description="Read an official state dict and write an sresformer_jax checkpoint directory "
                                   "(load it with sresformer_jax.checkpoint.load_model).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG_FROM)
    f.add_argument("--variant", required=True, choices=sorted(VARIANTS), metavar="VARIANT",
                   help="the official model constructor: " + ", ".join(sorted(VARIANTS)))
    f.add_argument("--pth", required=True, metavar="FILE",
                   help="official checkpoint: a torch.save .pth (a dict with a 'model' entry, or a bare state "
                        "dict), or an .npz whose keys are official state-dict names")
    f.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
    f.add_argument("--num-classes", type=int, metavar="N", help="classifier size (default: read from classifier.weight)")
    f.add_argument("--img-size", type=int, metavar="S",
                   help="input size the model is built for (default: the variant's; 32 for spikingresformer_cifar, "
                        "64 for spikingresformer_dvsg, as released)")
    f.add_argument("--T", type=int, metavar="T", help="time steps (default: the variant's; 16 for spikingresformer_dvsg)")
    f.add_argument("--dvs", action="store_true", help="the model takes event frames [B, T, H, W, C]")
    f.add_argument("--key", help="entry of the .pth dict holding the state dict (default: 'model' if present, "
                                 "else the whole file); for .npz, take the arrays named KEY/<name>")
    f.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"], metavar="DTYPE",
                   help="float32 (default), float64, bfloat16 or float16: dtype of the stored variables and of computation")
    f.add_argument("--force", action="store_true", help="replace --out if it exists")
    f.set_defaults(func=from_official_cmd)

    t = sub.add_parser("to-official", help="orbax checkpoint directory → official .pth (or .npz)",
                       description="Export an sresformer_jax checkpoint as an official state dict.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG_TO)
    t.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (from-official / "
                                                                      "sresformer_jax.checkpoint.save_model)")
    t.add_argument("--out", required=True, metavar="FILE",
                   help="file.pth ({'model': state_dict}, torch.load-able) or file.npz (flat official names)")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")
    t.set_defaults(func=to_official_cmd)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        for line in e.details:
            print(f"  {line}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        print("nothing was written.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
