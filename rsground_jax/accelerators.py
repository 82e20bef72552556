"""The accelerators `rsground plan` knows, from the vendors' data sheets (H100 and H200: SXM). JAX-free, so the
command line can offer them as choices without starting JAX."""

# name: (memory per device in GiB, peak dense bfloat16 TFLOP/s, memory bandwidth in GB/s)
DEVICES = {
    "tpu-v4": (32, 275, 1200),
    "tpu-v5e": (16, 197, 819),
    "tpu-v5p": (95, 459, 2765),
    "tpu-v6e": (32, 918, 1640),
    "h100": (80, 989, 3350),
    "h200": (141, 989, 4800),
}
