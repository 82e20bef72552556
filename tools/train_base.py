"""Train the embedded base model into runs/base_pretrain/model (same as `rsground sft --config ...`); the config
file says how to ship it in the package.

    python tools/train_base.py [--config configs/base_pretrain.py] [key=value ...]
"""

import sys

from rsground_jax.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args = ["--config", "configs/base_pretrain.py", *args]
    sys.exit(main(["sft", *args]))
