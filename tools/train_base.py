"""Train the embedded base model and write it into the package (same as `rsground sft --config ...`).

    python tools/train_base.py [--config configs/base_pretrain.py] [key=value ...]
"""

import sys

from rsground_jax.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args = ["--config", "configs/base_pretrain.py", *args]
    sys.exit(main(["sft", *args]))
