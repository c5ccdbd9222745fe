"""Evaluate a checkpoint: held-out top-1/top-5/loss, per-layer firing rates, SOPs and energy.

    python eval.py                                       # the quickstart run in runs/quickstart
    python eval.py --workdir=runs/ti                     # best (else latest) checkpoint of a training run
    python eval.py --workdir=runs/ti --which=latest
    python eval.py --config=configs/imagenet.py:ti --checkpoint=ckpt/ti_official --workdir=runs/ti_official

Writes WORKDIR/eval.json (top1, top5, loss, sops_per_image, energy_mj, firing_rates, per-layer SOPs,
dense MACs, A/S power ratio) and WORKDIR/firing_rates.png. The dataset comes from the training config
stored in the checkpoint, or from --config (needed for a converted official checkpoint).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", None, "Config file (default: the one stored in the checkpoint).",
                                lock_config=False)
flags.DEFINE_string("workdir", "runs/quickstart", "Training workdir to evaluate; eval.json is written here.")
flags.DEFINE_string("checkpoint", None, "A model checkpoint (e.g. from sresformer_jax.convert) or a training "
                    "step directory to evaluate instead of the workdir's.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of the workdir.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    import ml_collections

    from sresformer_jax import checkpoint
    from sresformer_jax.data import get_dataset
    from sresformer_jax.training.evaluation import evaluate_with_energy, write_report
    from sresformer_jax.training.steps import make_mesh
    from sresformer_jax.training.trainer import build_model, check_data_fits

    workdir = os.path.abspath(FLAGS.workdir)
    source = FLAGS.checkpoint or workdir
    step_dir = None if FLAGS.checkpoint else checkpoint.find_train_checkpoint(workdir, FLAGS.which)
    if not FLAGS.checkpoint and step_dir is None:
        sys.exit(f"eval.py: no checkpoint in {workdir} (expected {workdir}/best/<step> or "
                 f"{workdir}/checkpoints/<step>); train first (python train.py --workdir={FLAGS.workdir}) "
                 "or pass --checkpoint=PATH with --config=...")
    model_cfg, variables = checkpoint.load_variables(step_dir or source)
    config = FLAGS.config
    if config is None:
        stored = checkpoint.load_train_meta(step_dir).get("config") if step_dir else None
        if stored is None:
            sys.exit("eval.py: this checkpoint stores no training config; pass --config=configs/<dataset>.py")
        config = ml_collections.ConfigDict(stored)
    try:
        model = build_model(model_cfg, config.get("precision", "float32"))
        data = get_dataset(config)
        check_data_fits(data, config)
        report = evaluate_with_energy(model, variables, data, make_mesh())
    except (ValueError, FileNotFoundError) as e:   # uncalibrated model, missing data, bad config
        sys.exit(f"eval.py: {type(e).__name__}: {e}")
    report["checkpoint"] = str(step_dir or source)
    path, png = write_report(report, workdir, title=f"{config.get('model_name', '')} firing rates")
    print(f"checkpoint     {report['checkpoint']}")
    print(f"images         {report['num_images']}")
    print(f"top-1 / top-5  {100 * report['top1']:.2f} % / {100 * report['top5']:.2f} %   (loss {report['loss']:.4f})")
    print(f"SOPs / image   {report['sops_per_image'] / 1e6:.3f} M   (stem conv and classifier excluded, "
          "as the paper)")
    print(f"energy / image {report['energy_mj']:.6f} mJ   (0.9 pJ per SOP)")
    print(f"dense MACs     {report['macs_per_step'] / 1e6:.3f} M per step; A/S power ratio "
          f"{report['as_power_ratio']:.2f} (4.6 pJ/MAC vs 0.9 pJ/SOP)")
    rates = report["firing_rates"]
    print(f"firing rates   mean {100 * sum(rates.values()) / len(rates):.2f} % over {len(rates)} spiking layers "
          f"(min {100 * min(rates.values()):.2f} %, max {100 * max(rates.values()):.2f} %)")
    print(f"wrote          {path} and {png}")


if __name__ == "__main__":
    sys.path.insert(0, _HERE)
    from sresformer_jax.runtime import reexec_with_huge_pages
    reexec_with_huge_pages()       # XLA:CPU's per-step buffers on huge pages (restarts once; sresformer_jax/runtime.py)
    app.run(main)
