"""``python -m sresformer_jax.ops``: build (or find) the compiled CPU kernels for this host and list them."""
import sys

from .kernels import main

sys.exit(main())
