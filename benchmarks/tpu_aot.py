"""The pod report: the real training step compiled for TPU chips that are not here (deviceless AOT compilation).

    pip install "jax[tpu]==0.10.2"          # libtpu, the TPU compiler; no TPU needed
    python benchmarks/tpu_aot.py                                    # the README table (hours on 2 cores)
    python benchmarks/tpu_aot.py --config imagenet.py:l --img-size 288 --remat block --topology v4:2x2x1
    python benchmarks/tpu_aot.py --required                         # every variant compiles (no batch search)

For every (config, precision, remat, topology) it lowers the training loop's own train step
(``sresformer_jax.training.lower_steps``) on a mesh of the topology's devices
(``jax.experimental.topologies.get_topology_desc``) and compiles it with libtpu, then reports per chip:

* the HBM the step needs at the official per-device batch (Ti/S 32, M 28, L 16; ``--batch`` otherwise): XLA's
  memory analysis, arguments + temporaries + outputs, less the outputs that reuse the donated state's buffers;
* the largest per-chip batch that fits the chip's HBM: extrapolated linearly from the compiles at the official batch
  and at twice it (half of it when the official batch does not fit), then confirmed by a compile at the extrapolated
  batch; where libtpu's own rematerialisation near the cap bends the line, bisected between the largest batch that
  fits and the smallest that does not (``largest_batch``);
* the FLOPs per image and the bytes of the collectives per step (``training.aot.census``);
* a roofline **bound** on images/s per chip: the compiled FLOPs and bytes accessed against the chip's published
  bf16 peak and HBM bandwidth (``CHIPS``), never a measurement;
* the compile time on this machine.

Nothing runs on a TPU: these are compiled programs, not measurements. Results are merged into
``benchmarks/results/tpu_aot.json`` (one entry per setting, written as each finishes) and printed as a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "tpu_aot.json"

# published per-chip figures (a device of these topologies is one chip): HBM, bf16 peak, HBM bandwidth; and the HBM a
# program may use, as libtpu's compiler reports it when a program does not fit ("exceeds available HBM (15.75G)")
CHIPS = {
    "TPU v5 lite": {"name": "v5e", "hbm_gib": 16, "usable_hbm_gib": 15.75, "bf16_tflops": 197, "hbm_gbps": 819},
    "TPU v5": {"name": "v5p", "hbm_gib": 95, "usable_hbm_gib": 95.74, "bf16_tflops": 459, "hbm_gbps": 2765},
    "TPU v6 lite": {"name": "v6e", "hbm_gib": 32, "usable_hbm_gib": 32, "bf16_tflops": 918, "hbm_gbps": 1640},
}
# the official per-GPU training batches (8 GPUs; configs/imagenet.py), the batch the report starts from
OFFICIAL_BATCH = {"imagenet.py:ti": 32, "imagenet.py:s": 32, "imagenet.py:m": 28, "imagenet.py:l": 16,
                  "cifar10.py": 128, "dvs128_gesture.py": 8}
SHORT = {"ti": "imagenet.py:ti", "s": "imagenet.py:s", "m": "imagenet.py:m", "l": "imagenet.py:l",
         "cifar": "cifar10.py", "dvsg": "dvs128_gesture.py"}
# every variant at its official recipe (bf16, remat none) on v5e (L at 288 also with remat block; the DVS128 Gesture
# model also at the sensor's full 128² instead of the recipe's 64²), and Ti in float32 and with remat block on v5e and
# v5p
# (the last field: the model's attention_chunk, DSSA's map rows at a time; at 128² the map is the largest array)
REQUIRED = ([(c, None, None, "bfloat16", "none", "v5e:2x2", None) for c in ("ti", "s", "m", "l")]
            + [("l", 288, None, "bfloat16", "none", "v5e:2x2", None),
               ("l", 288, None, "bfloat16", "block", "v5e:2x2", None),
               ("cifar", 32, None, "bfloat16", "none", "v5e:2x2", None),
               ("dvsg", None, None, "bfloat16", "none", "v5e:2x2", None),      # the official recipe: 64², T = 16
               ("dvsg", 128, 16, "bfloat16", "none", "v5e:2x2", 128)]           # the sensor's full 128²
            + [("ti", None, None, p, r, t, None) for t in ("v5e:2x2", "v5p:2x2x1")
               for p, r in (("float32", "none"), ("bfloat16", "block"))])


def mesh_of(topology: str):
    from jax.experimental import topologies

    from sresformer_jax.training.steps import make_mesh
    return make_mesh(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)


def config_of(spec: str, img_size: int | None, T: int | None, precision: str, remat: str,
              attention_chunk: int | None = None):
    from sresformer_jax import configs
    c = configs.load(SHORT.get(spec, spec))
    if attention_chunk:
        c.model.attention_chunk = attention_chunk
    if img_size:
        c.model.img_size = c.dataset.img_size = img_size
    if T:
        c.model.T = T
        if "T" in c.dataset:
            c.dataset.T = T
    c.precision, c.remat = precision, remat
    return c


def compile_step(setting: dict, batch: int) -> dict:
    """Compiles the train step of ``setting`` at ``batch`` per chip, in a process of its own (libtpu's compiler
    aborts the process on some programs): memory, FLOPs, bytes accessed, collectives, time; or, when the compiler
    finds that it does not fit, ``{"oom": ...}``; or ``{"error": ...}``."""
    cmd = [sys.executable, __file__, "--one", json.dumps({**setting, "batch": batch})]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode == 0 and RESULT in p.stdout:
        return json.loads(p.stdout.split(RESULT, 1)[1])
    tail = [line for line in p.stderr.splitlines() if re.search(r"Error|Check failed|RESOURCE_EXHAUSTED", line)]
    return {"batch_per_chip": batch, "error": (tail[-1] if tail else p.stderr[-2000:])[:2000]}


RESULT = "TPU_AOT_RESULT "


def _compile_one(setting: dict) -> dict:
    from bench import _memory_analysis
    from sresformer_jax.training import lower_steps
    from sresformer_jax.training.aot import census
    config = config_of(setting["config"], setting["img_size"], setting["T"], setting["precision"], setting["remat"],
                       setting.get("attention_chunk"))
    mesh, batch = mesh_of(setting["topology"]), setting["batch"]
    t0 = time.perf_counter()
    train, _ = lower_steps(config, mesh, batch)
    try:
        compiled = train.compile()
    except Exception as e:  # noqa: BLE001 - libtpu: "Ran out of memory on HBM ... exceeds available HBM (15.75G)"
        m = re.search(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", str(e))
        if not m:
            raise
        return {"batch_per_chip": batch, "oom": {"temp_gib": float(m[1]), "available_gib": float(m[2])},
                "compile_s": time.perf_counter() - t0, "chips": int(mesh.devices.size),
                "device_kind": mesh.devices.flat[0].device_kind}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = _memory_analysis(compiled)
    return {"batch_per_chip": batch, "hbm_bytes": mem["total_estimate_bytes"], "memory_analysis": mem,
            "flops": float(cost["flops"]), "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
            "collectives": census(compiled), "compile_s": time.perf_counter() - t0,
            "chips": int(mesh.devices.size), "device_kind": mesh.devices.flat[0].device_kind}


def chip_of(step: dict, topology: str) -> dict | None:
    """The ``CHIPS`` entry of a compile's device kind (or of the topology's name, for a compile that did not fit)."""
    by_name = {c["name"]: c for c in CHIPS.values()}
    return CHIPS.get(step.get("device_kind")) or by_name.get(topology.split(":")[0])


def _needs(step: dict) -> float:
    """The HBM bytes a compiled step needs (for a compile that did not fit: at least its temporaries)."""
    return step["hbm_bytes"] if "hbm_bytes" in step else step["oom"]["temp_gib"] * 2**30


def _fits(step: dict, cap: float) -> bool:
    return "hbm_bytes" in step and step["hbm_bytes"] <= cap


def _verdict(steps: list[dict], cap: float) -> tuple[dict | None, int | None]:
    """(the compile of the largest batch that fits ``cap``, the smallest batch above it that does not) of a search's
    compiles; compiles that failed with an error count as neither."""
    best = max((st for st in steps if _fits(st, cap)), key=lambda st: st["batch_per_chip"], default=None)
    lo = best["batch_per_chip"] if best else 0
    return best, min((st["batch_per_chip"] for st in steps if "error" not in st and not _fits(st, cap)
                      and st["batch_per_chip"] > lo), default=None)


def _bisect(steps: list[dict], cap: float) -> int | None:
    """The batch between the largest fitting one and the smallest failing one above it, while the fitting one is
    under 95 % of ``cap`` and they are more than 1/16 apart; None when the search is done."""
    if any("error" in st for st in steps):
        return None
    best, over = _verdict(steps, cap)
    lo = best["batch_per_chip"] if best else 0
    if (best and best["hbm_bytes"] >= 0.95 * cap) or over is None or over - lo <= max(1, lo // 16):
        return None
    return (lo + over) // 2


def _recorded_steps(first: dict, search: dict, cap: float) -> list[dict]:
    """The compiles of a recorded search (a row's ``largest_batch``), ``first`` included."""
    b, needs = search["from"][1], search["hbm_bytes_at_second"]
    second = {"batch_per_chip": b, **({"hbm_bytes": needs} if needs <= cap else {"oom": {"temp_gib": needs / 2**30}})}
    return [first, second, *search["confirmed"]]


def search_open(row: dict) -> bool:
    """Whether a row's recorded largest-batch search left a gap that ``largest_batch`` would close."""
    search, chip = row.get("largest_batch"), chip_of(row["at_official_batch"], row["topology"])
    if not search or "error" in search or "hbm_bytes_at_second" not in search or not chip:
        return False
    cap = chip["usable_hbm_gib"] * 2**30
    return _bisect(_recorded_steps(row["at_official_batch"], search, cap), cap) is not None


def rescore(row: dict) -> dict:
    """``row`` with whether it fits, and its search's largest fitting and smallest failing batch, worked out again
    from its compiles against ``CHIPS`` as it is now (the verdicts follow the chips' usable HBM, the bytes do not)."""
    first, search = row["at_official_batch"], row.get("largest_batch")
    chip = chip_of(first, row["topology"])
    if not chip:
        return row
    cap = chip["usable_hbm_gib"] * 2**30
    row = {**row, "fits_official_batch": _fits(first, cap)}
    if search and "error" not in search and "hbm_bytes_at_second" in search:
        best, over = _verdict(_recorded_steps(first, search, cap), cap)
        row["largest_batch"] = {**search, "largest_fitting": best and best["batch_per_chip"], "smallest_failing": over}
    return row


def largest_batch(setting: dict, first: dict, cap: float, tries: int = 3, compile_fn=None,
                  previous: dict | None = None) -> dict:
    """The largest per-chip batch whose step fits ``cap`` bytes, in two phases:

    1. extrapolated linearly from ``first`` and a compile at twice its batch (at half of it when ``first`` does not
       fit), then confirmed by compiling there; while a confirmation lands over ``cap`` or under 95 % of it, the line
       through the last two compiles is extrapolated again (at most ``tries`` confirmations);
    2. near the cap libtpu rematerialises on its own to fit, so the bytes stop growing linearly with the batch:
       ``_bisect`` between the largest fitting batch and the smallest failing one (at most ``tries`` compiles).

    ``previous``: a search recorded before (a row's ``largest_batch``), continued at phase 2 with its compiles.
    ``compile_fn(setting, batch)``: ``compile_step`` unless given."""
    compile_fn = compile_fn or compile_step

    def run(b):
        step = compile_fn(setting, b)
        return {k: step[k] for k in ("batch_per_chip", "hbm_bytes", "oom", "error", "compile_s") if k in step}

    b0 = first["batch_per_chip"]
    if previous:
        b_second, confirmed, predicted = previous["from"][1], list(previous["confirmed"]), previous["extrapolated"]
        steps = _recorded_steps(first, previous, cap)
        second = steps[1]
    else:
        b_second = 2 * b0 if _fits(first, cap) else b0 // 2
        if b_second < 1:
            return {"from": [b0], "confirmed": [], "largest_fitting": None}
        second = compile_fn(setting, b_second)
        if "error" in second:
            return {"from": [b0, b_second], "error": second["error"],
                    "largest_fitting": b0 if _fits(first, cap) else None}
        confirmed, predicted, steps = [], None, [first, second]
        points = [(b0, _needs(first)), (b_second, _needs(second))]
        for _ in range(tries):                                                        # phase 1
            (b1, m1), (b2, m2) = sorted(points[-2:])
            per_image = (m2 - m1) / (b2 - b1)
            if per_image <= 0:                  # not a line any more: phase 2
                break
            b = max(1, math.floor(b2 + (cap - m2) / per_image))
            predicted = predicted or b
            if any(b == p for p, _ in points):
                break
            step = run(b)
            confirmed.append(step)
            steps.append(step)
            if "error" in step:
                break
            points.append((b, _needs(step)))
            if _fits(step, cap) and step["hbm_bytes"] >= 0.95 * cap:
                break
    for _ in range(tries):                                                            # phase 2
        b = _bisect(steps, cap)
        if b is None:
            break
        step = run(b)
        confirmed.append(step)
        steps.append(step)
    best, over = _verdict(steps, cap)
    return {"extrapolated": predicted, "from": [b0, b_second], "confirmed": confirmed,
            "largest_fitting": best and best["batch_per_chip"], "smallest_failing": over,
            "hbm_bytes_at_second": _needs(second)}


def report(spec, img_size, T, precision, remat, topology, batch=None, search=True, known=None,
           attention_chunk=None) -> dict:
    """One row of the report. ``known`` maps ``key`` to rows already compiled: a row of the same setting and batch
    lends its first compile (which keeps the commit it was compiled at) instead of compiling it again."""
    import jax
    config, setting, b0 = _setting(spec, img_size, T, precision, remat, topology, batch, attention_chunk)
    row = {**setting, "model": config.model_name, "batch": b0, "jax": jax.__version__}
    old = (known or {}).get(key(row))
    first = ({**old["at_official_batch"], "commit": old.get("commit")}
             if old and "error" not in old["at_official_batch"] else compile_step(setting, b0))
    row["at_official_batch"] = first
    if "error" in first or "oom" in first:
        row["error" if "error" in first else "oom"] = first.get("error") or first["oom"]
        row["fits_official_batch"] = False if "oom" in first else None
        chip = chip_of(first, topology)
        if search and chip and "oom" in first:      # the largest batch below the official one that fits
            row["largest_batch"] = largest_batch(setting, first, chip["usable_hbm_gib"] * 2**30)
        return row
    chip = row["chip"] = chip_of(first, topology)
    row["chips"] = first["chips"]
    row["flops_per_image"] = first["flops"] / b0
    row["collective_bytes_per_step"] = sum(c["bytes"] for c in first["collectives"].values())
    row["compile_s"] = first["compile_s"]
    if chip:
        cap = chip["usable_hbm_gib"] * 2**30
        row["fits_official_batch"] = first["hbm_bytes"] <= cap
        compute_s = first["flops"] / (chip["bf16_tflops"] * 1e12)
        memory_s = first["bytes_accessed"] / (chip["hbm_gbps"] * 1e9)
        row["roofline_bound_img_per_s_per_chip"] = b0 / max(compute_s, memory_s)
        row["roofline_limited_by"] = "compute" if compute_s >= memory_s else "HBM bandwidth"
        if search:
            previous = old.get("largest_batch") if old and search_open(old) else None
            row["largest_batch"] = largest_batch(setting, first, cap, previous=previous)
    return row


def key(row: dict) -> str:
    chunk = f"|chunk{row['attention_chunk']}" if row.get("attention_chunk") else ""
    return "|".join(str(row[k]) for k in ("config", "img_size", "T", "precision", "remat", "topology", "batch")) + chunk


def _setting(spec, img_size, T, precision, remat, topology, batch=None, attention_chunk=None) -> tuple:
    """(config, the setting's fields of a row, the per-chip batch to start from) for ``report``'s arguments."""
    config = config_of(spec, img_size, T, precision, remat, attention_chunk)
    b0 = batch or OFFICIAL_BATCH.get(SHORT.get(spec, spec)) or config.batch_size // 8
    setting = {"config": SHORT.get(spec, spec), "img_size": config.model.img_size, "T": config.model.T,
               "precision": precision, "remat": remat, "topology": topology}
    if attention_chunk:
        setting["attention_chunk"] = attention_chunk
    return config, setting, b0


def planned_key(spec, img_size, T, precision, remat, topology, batch=None, attention_chunk=None) -> str:
    """``key`` of the row that ``report`` would write for these arguments, without compiling anything."""
    _, setting, b0 = _setting(spec, img_size, T, precision, remat, topology, batch, attention_chunk)
    return key({**setting, "batch": b0})


def _error_code(error: str) -> str:
    """libtpu's error code and name in ``error`` ("E1001: CompileTimeScopedVmemOom"), else its first 60 characters."""
    code = re.search(r"E\d{4}: \w+", error)
    return code[0] if code else error[:60]


def table(rows: list[dict], markdown: bool = False) -> str:
    """The report's rows as a text table (``markdown``: as the README's)."""
    head = ["model", "img", "T", "precision", "remat", "chip", "batch", "HBM GiB/chip", "fits", "largest batch",
            "GFLOP/img", "collectives MB/step", "bound img/s/chip", "compile s", "commit"]
    lines = [head]
    for r in rows:
        a, chip = r["at_official_batch"], chip_of(r["at_official_batch"], r["topology"])
        search = r.get("largest_batch") or {}
        big = search.get("largest_fitting")
        big = "" if not search else "none" if big is None else \
            f"{big} (not {search['smallest_failing']})" if search.get("smallest_failing") else big
        if "error" in search:
            big = f"{big}; then {_error_code(search['error'])}"
        if "hbm_bytes" in a:
            hbm, fits = f"{a['hbm_bytes'] / 2**30:.2f}", "yes" if r.get("fits_official_batch") else "no"
        else:
            hbm, fits = (f"{r['oom']['temp_gib']} (temporaries)", "no") if "oom" in r else \
                (f"did not compile: {_error_code(r.get('error', ''))}", "")
        name = r["model"].replace("spikingresformer_", "")
        name += f" (map rows {r['attention_chunk']})" if r.get("attention_chunk") else ""
        lines.append([name, r["img_size"], r["T"], r["precision"], r["remat"],
                      chip["name"] if chip else r["topology"], r["batch"], hbm, fits, big,
                      f"{r['flops_per_image'] / 1e9:.1f}" if "flops_per_image" in r else "",
                      f"{r['collective_bytes_per_step'] / 1e6:.1f}" if "collective_bytes_per_step" in r else "",
                      f"{r['roofline_bound_img_per_s_per_chip']:.0f}" if "roofline_bound_img_per_s_per_chip" in r
                      else "", f"{a['compile_s']:.0f}" if "compile_s" in a else "",
                      a.get("commit") or r.get("commit") or ""])
    if markdown:
        return "\n".join(["| " + " | ".join(map(str, lines[0])) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(map(str, row)) + " |" for row in lines[1:]])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]

    def fmt(row):
        return " | ".join(str(c).rjust(w) for c, w in zip(row, widths))
    return "\n".join([fmt(lines[0]), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in lines[1:]])


def recorded(saved: dict) -> list[dict]:
    """Every setting of a report's JSON, once (a row of the batch search over a compile of the required set), in the
    order chip, variant, image size, precision, remat."""
    order = list(SHORT.values())
    rows = {key(r): rescore(r) for sec in ("compiles", "rows") for r in saved.get(sec, [])}
    return sorted(rows.values(), key=lambda r: (r["topology"], order.index(r["config"]) if r["config"] in order
                                                else len(order), r["img_size"], r["precision"] != "bfloat16",
                                                ("none", "block", "convs").index(r["remat"])))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", default=["ti", "s", "m", "l"],
                   help="ti|s|m|l|cifar|dvsg or a config spec (imagenet.py:ti, a file of your own)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--T", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=["bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--remat", nargs="+", default=["none", "block"], choices=["none", "block", "convs"])
    p.add_argument("--topology", nargs="+", default=["v5e:2x2", "v5p:2x2x1"])
    p.add_argument("--batch", type=int, default=None, help="per-chip batch to start from (default: the official)")
    p.add_argument("--attention-chunk", type=int, default=None,
                   help="the model's attention_chunk: DSSA's attention-map rows computed at a time (default: all)")
    p.add_argument("--no-search", action="store_true", help="compile at the batch only (no largest-batch search)")
    p.add_argument("--required", action="store_true", help="the compile set: every variant at its official recipe")
    p.add_argument("--skip-done", action="store_true",
                   help="leave out the settings the JSON already holds, with their largest-batch search unless "
                   "--no-search (a long report goes on where it stopped, and a search that left a gap goes on)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--show", action="store_true", help="print the JSON's table (markdown) and compile nothing")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)    # a child: one compile, JSON on stdout
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")           # the host runs nothing; libtpu only compiles
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # so several reports (or a TPU job) may compile at once
    if a.one:
        print(RESULT + json.dumps(_compile_one(json.loads(a.one))), flush=True)
        return {}
    if a.show:
        saved = json.loads(Path(a.out).read_text())
        print(table(recorded(saved), markdown=True))
        return saved
    import jax
    import libtpu

    from bench import _commit, machine_info
    settings = ([(c, i, t, pr, r, tp, None, False, ch) for c, i, t, pr, r, tp, ch in REQUIRED] if a.required else
                [(c, a.img_size, a.T, pr, r, tp, a.batch, not a.no_search, a.attention_chunk) for tp in a.topology
                 for c in a.config for pr in a.precision for r in a.remat])
    out = Path(a.out)
    old = json.loads(out.read_text()) if a.out and out.exists() else {}
    section = "compiles" if a.required else "rows"
    for r in old.get(section, []):              # entries written before rows carried their own commit
        r.setdefault("commit", old.get("commit"))
    entries = {key(r): rescore(r) for r in old.get(section, [])}
    known = {key(r): r for sec in ("compiles", "rows") for r in old.get(sec, [])}
    rows = []
    for c, img, T, prec, remat, topo, batch, search, chunk in settings:
        done = entries.get(planned_key(c, img, T, prec, remat, topo, batch, chunk))
        if a.skip_done and done and (not search or ("largest_batch" in done and not search_open(done))
                                     or "error" in done):
            print(f"{c} {img or ''} {prec} remat={remat} {topo}: in {out.name} already", flush=True)
            continue
        print(f"{c} {img or ''} {prec} remat={remat} {topo} ...", flush=True)
        row = {**report(c, img, T, prec, remat, topo, batch, search, known, chunk), "commit": _commit()}
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        entries[key(row)] = row
        if a.out:                       # after each setting: a long run keeps what it has done
            old.update({"description": "benchmarks/tpu_aot.py: the train step compiled for TPU topologies without "
                        "a TPU (jax[tpu] deviceless AOT); per-chip HBM, largest batch, FLOPs, collectives and a "
                        "roofline bound (not a measurement)", "commit": _commit(), "machine": machine_info(),
                        "libtpu": getattr(libtpu, "__version__", None), "chips": CHIPS,
                        section: list(entries.values())})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(old, indent=1))
    print(f"\ncommit {_commit()}, jax {jax.__version__}, libtpu {getattr(libtpu, '__version__', '?')}; compiled on "
          f"{machine_info()['cpu_model']} ({os.cpu_count()} cores); HBM per chip: arguments + temporaries + outputs "
          "less the donated buffers; the bound is a roofline, not a measurement\n")
    print(table(rows))
    failed = [v for v in entries.values() if "error" in v or "oom" in v]
    if failed:
        print(f"\n{len(failed)} setting(s) did not compile or fit: " + "; ".join(key(v) for v in failed))
    return {"rows": rows, "failed": failed}


if __name__ == "__main__":
    main()
