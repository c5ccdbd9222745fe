"""Command-line entry points: ``sresformer-train`` (``python train.py``) and ``sresformer-eval`` (``python eval.py``).

Each call parses its own flags into a fresh ``absl.flags.FlagValues`` and then calls a plain function:
``training.train_and_evaluate(config, workdir)`` or ``training.evaluation.evaluate_checkpoint(...)``. Nothing is
global, so ``train([...])`` can be called twice in one process (a notebook) and never replaces the process.
A bad flag, config or input ends in one line on stderr and exit status 2 (1 for a failed run), not a traceback.
"""
from __future__ import annotations

import difflib
import functools
import os
import shlex
import signal
import sys
from pathlib import Path

from absl import flags, logging

from . import configs

_EXPECTED_ERRORS = (ValueError, RuntimeError, FloatingPointError, FileNotFoundError, OSError, KeyError)


class UsageError(Exception):
    """A command line that cannot be run; the message says why and what to type instead."""


def _resolve_config_paths(argv: list[str]) -> list[str]:
    """``--config=NAME.py[:arg]`` (or ``configs/NAME.py``) that is not a file here names a shipped config."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            a, i = f"--config={argv[i + 1]}", i + 1
        if a.startswith("--config="):
            spec = a[len("--config="):]
            file, sep, arg = spec.partition(":")
            shipped = configs.path(file) if not os.path.exists(file) else None
            if shipped is not None:
                a = f"--config={shipped}{sep}{arg}"
        out.append(a)
        i += 1
    return out


def _config_fields(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        name = f"{prefix}{k}"
        out.append(name)
        if hasattr(v, "items"):
            out.extend(_config_fields(v, name + "."))
    return out


def _unknown_override(argv: list[str], fv_factory) -> str | None:
    """The first ``--config.x=y`` of ``argv`` that names no field of the config, with the nearest valid one."""
    base = [a for a in argv if not a.startswith("--config.")]
    try:
        config = fv_factory(base).config
    except Exception:  # noqa: BLE001 - the config itself does not load: reported by the caller
        return None
    fields = _config_fields(config)
    for a in argv:
        if a.startswith("--config."):
            name = a[len("--config."):].split("=", 1)[0]
            if name in fields:
                continue
            parent, _, leaf = name.rpartition(".")
            while parent and parent not in fields:                 # the deepest part that exists
                parent, _, _ = parent.rpartition(".")
            siblings = [f for f in fields if f.rpartition(".")[0] == parent]
            near = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
            hint = f"; did you mean --config.{near[0]}?" if near else (
                f"; the fields of {'config.' + parent if parent else 'the config'} are "
                f"{', '.join(sorted(f.rpartition('.')[2] for f in siblings))}")
            return f"--config.{name} is not a field of this config{hint}"
    return None


def _make(args: list[str], define) -> flags.FlagValues:
    """Defines the flags on a fresh FlagValues and parses ``args`` (``--config.x=None`` sets a field to None)."""
    fv = flags.FlagValues()
    define(fv, [a for a in args if not _is_none_override(a)])
    fv([a for a in args if not _is_none_override(a)])
    for a in filter(_is_none_override, args):         # --config.x=None: config_flags parses no None
        *parents, leaf = a[len("--config."):-len("=None")].split(".")
        node = fv.config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = None
    return fv


def _is_none_override(arg: str) -> bool:
    return arg.startswith("--config.") and arg.endswith("=None")


def _config_help(argv: list[str], define) -> str:
    """The fields of the ``--config`` on the command line (with its overrides) and their values, one per line."""
    try:
        fv = _make(argv, define)
        config, spec = fv.config, fv["config"].config_filename
    except Exception as err:  # noqa: BLE001 - help still prints; say why the fields are missing
        if not any(a.startswith("--config") for a in argv):
            return ""                                    # eval.py without --config: the run's own config
        return f"\n(the config's fields could not be listed: {str(err).splitlines()[0] if str(err) else err!r})"

    def lines(c, prefix=""):
        for k, v in c.items():
            if hasattr(v, "items"):
                yield from lines(v, f"{prefix}{k}.")
            else:
                yield f"  --config.{prefix}{k}={v!r}"
    return (f"\nconfig fields of {Path(spec).name} (override any with --config.FIELD=VALUE):\n"
            + "\n".join(lines(config)))


def _parse(argv: list[str], define) -> flags.FlagValues:
    """Defines the flags on a fresh FlagValues with ``define(fv, argv)`` and parses ``argv``; a bad command line
    raises ``UsageError`` with a one-line message."""
    argv = _resolve_config_paths(list(argv))
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        fv = flags.FlagValues()
        rest = [a for a in argv if a not in ("--help", "-h", "--helpfull")]
        define(fv, rest[:1])
        print(f"usage: {Path(argv[0]).name} [flags]\n\n{fv.get_help()}")
        if "config" in fv:
            print(_config_help(rest, define))
        raise SystemExit(0)

    make = functools.partial(_make, define=define)

    try:
        fv = make(argv)
        if fv.config is not None:                        # load the config file now: its errors are usage errors
            fv.config.keys()
    except (AttributeError, KeyError) as err:            # config_flags: an override that names no field
        raise UsageError(_unknown_override(argv, make) or f"bad --config override: {err}") from None
    except flags.Error as err:
        raise UsageError(str(err).splitlines()[0]) from None
    except OSError as err:                               # the config file does not load
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        why = str(err).strip().splitlines()[-1].strip()
        raise UsageError(f"cannot load --config={spec} ({why}); the shipped configs are "
                         f"{', '.join(configs.names())}") from None
    return fv


def _run(prog: str, argv, define, body) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.set_verbosity(logging.WARNING)               # orbax logs every save at INFO
    try:
        fv = _parse(argv, define)
    except UsageError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    try:
        return body(fv, argv) or 0
    except _EXPECTED_ERRORS as err:                      # bad config, data, workdir or input: a message
        print(f"{prog}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _advise_allocator(prog: str, platform_name: str) -> None:
    """One line on stderr when a CPU run was started without a host-allocator setting (``runtime``)."""
    from .runtime import allocator_advice
    advice = allocator_advice(platform_name)
    if advice:
        print(f"{prog}: note: {advice}", file=sys.stderr, flush=True)


def _init_distributed(fv) -> None:
    import jax
    if not fv.distributed:
        return
    kw = {k: v for k, v in dict(coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
                                process_id=fv.process_id).items() if v is not None}
    from .runtime import accelerator_present
    if not accelerator_present():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


def _define_train(fv: flags.FlagValues, argv: list[str]) -> None:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", str(configs.path("quickstart.py")),
                                    "Training config: a shipped one (imagenet.py:ti, cifar10.py, ...) or a file "
                                    "of your own, with --config.x=y overrides.", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv_ = dict(flag_values=fv)
    flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (default: runs/<config name>).", **fv_)
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-process runs).", **fv_)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).", **fv_)
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).", **fv_)
    flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).", **fv_)


def train(argv: list[str] | None = None) -> int:
    """``sresformer-train``: trains ``--config`` into ``--workdir`` (resuming it if it has checkpoints)."""
    def body(fv, argv):
        _init_distributed(fv)
        import jax

        from .checkpoint import quiet_closed_loop_callbacks
        from .training.preemption import Preempted
        from .training.trainer import train_and_evaluate
        _advise_allocator("train.py", jax.default_backend())
        quiet_closed_loop_callbacks()
        name = Path(fv["config"].config_filename.split(":")[0]).stem
        try:
            train_and_evaluate(fv.config, fv.workdir or os.path.join("runs", name))
        except Preempted as p:                           # saved: say where, and how to go on
            command = shlex.join(argv)
            command = f"python {command}" if argv[0].endswith(".py") else command
            print(f"train.py: {p}. Resume with the same command from the same directory: {command}",
                  file=sys.stderr, flush=True)
            return 128 + signal.Signals[p.signame].value  # the shell's code for "ended by this signal"

    return _run("train.py", argv, _define_train, body)


def _define_eval(fv: flags.FlagValues, argv: list[str]) -> None:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Config (default: the one stored in the checkpoint).",
                                    flag_values=fv, lock_config=False, sys_argv=argv)
    fv_ = dict(flag_values=fv)
    flags.DEFINE_string("workdir", "runs/quickstart", "Training workdir to evaluate; eval.json is written here.", **fv_)
    flags.DEFINE_string("checkpoint", None, "A model checkpoint (e.g. from sresformer_jax.convert) or a training "
                        "step directory to evaluate instead of the workdir's.", **fv_)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of the workdir.", **fv_)
    flags.DEFINE_enum("conv_impl", None, ["auto", "xla", "slices", "events"],
                      "The model's lowering (default: the config's).", **fv_)
    flags.DEFINE_bool("deploy", False, "Also evaluate the folded, spike-driven deploy form (sresformer_jax.deploy) "
                      "and report it next to the training form.", **fv_)


def evaluate(argv: list[str] | None = None) -> int:
    """``sresformer-eval``: held-out accuracy, per-layer firing rates, SOPs and energy of a checkpoint."""
    def body(fv, argv):
        import jax

        from .checkpoint import quiet_closed_loop_callbacks
        from .training.evaluation import evaluate_checkpoint
        _advise_allocator("eval.py", jax.default_backend())
        quiet_closed_loop_callbacks()
        r = evaluate_checkpoint(fv.workdir, fv.checkpoint, fv.config, fv.which, fv.conv_impl, fv.deploy)
        rates = r["firing_rates"]
        print(f"checkpoint     {r['checkpoint']}")
        print(f"conv_impl      {r['conv_impl']}")
        print(f"images         {r['num_images']}")
        print(f"top-1 / top-5  {100 * r['top1']:.2f} % / {100 * r['top5']:.2f} %   (loss {r['loss']:.4f})")
        print(f"SOPs / image   {r['sops_per_image'] / 1e6:.3f} M   (stem conv and classifier excluded, as the paper)")
        print(f"energy / image {r['energy_mj']:.6f} mJ   (0.9 pJ per SOP)")
        print(f"dense MACs     {r['macs_per_step'] / 1e6:.3f} M per step; A/S power ratio "
              f"{r['as_power_ratio']:.2f} (4.6 pJ/MAC vs 0.9 pJ/SOP)")
        print(f"firing rates   mean {100 * sum(rates.values()) / len(rates):.2f} % over {len(rates)} spiking "
              f"layers (min {100 * min(rates.values()):.2f} %, max {100 * max(rates.values()):.2f} %)")
        if "deploy" in r:
            d = r["deploy"]
            drates = d["firing_rates"]
            print(f"deploy form    top-1 {100 * d['top1']:.2f} % / top-5 {100 * d['top5']:.2f} %, "
                  f"{d['sops_per_image'] / 1e6:.3f} M SOPs, {d['energy_mj']:.6f} mJ per image; firing mean "
                  f"{100 * sum(drates.values()) / len(drates):.2f} %; prediction differs from the training form on "
                  f"{100 * d['predictions_differ']:.2f} % of the images")
        print(f"wrote          {r['report_path']} and {r['plot_path']}")

    return _run("eval.py", argv, _define_eval, body)


def train_main() -> None:
    sys.exit(train())


def eval_main() -> None:
    sys.exit(evaluate())
