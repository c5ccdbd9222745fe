"""Train a SpikingResformer.

    python train.py                                             # quickstart on digits → runs/quickstart
    python train.py --config=configs/imagenet.py:ti --workdir=runs/ti --config.batch_size=512

Multi-host (TPU pods, GPU clusters): launch the same command on every host with --distributed; JAX's
runtime finds the coordinator (SLURM, TPU, or --coordinator_address/--num_processes/--process_id).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "quickstart.py"),
                                "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (default: runs/<config name>).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-process runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).")
FLAGS = flags.FLAGS


def init_distributed():
    import jax
    if not FLAGS.distributed:
        return
    kw = {k: v for k, v in dict(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                                process_id=FLAGS.process_id).items() if v is not None}
    from sresformer_jax.runtime import accelerator_present
    if not accelerator_present():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    init_distributed()
    from sresformer_jax.training.trainer import train_and_evaluate
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(
        flags.FLAGS["config"].config_filename.split(":")[0]))[0])
    try:
        train_and_evaluate(config, workdir)
    except (ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as e:
        # Bad config, a busy or unreadable workdir, a non-finite loss: a message, not a traceback.
        sys.exit(f"train.py: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.path.insert(0, _HERE)
    from sresformer_jax.runtime import reexec_with_huge_pages
    reexec_with_huge_pages()       # XLA:CPU's per-step buffers on huge pages (restarts once; sresformer_jax/runtime.py)
    app.run(main)
