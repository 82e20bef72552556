"""Bad input to every subcommand of the installed `rsground`: exit status 2, one line on stderr that names the
file or value and the problem, no traceback, and nothing changed on disk (the case's own folder and the
shared inputs are compared file by file, content included, before and after)."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, TINY_SFT, assert_refused, rsground, snapshot

TINY_GRPO = REPO / "tests" / "reliability" / "tiny_grpo.py"
SFT_GRPO = REPO / "tests" / "reliability" / "tiny_sft_grpo.py"


def _file(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _model_without(world: Path, d: Path, *names: str) -> Path:
    """A copy of the packaged model folder without the named files."""
    out = d / "model"
    shutil.copytree(world / "model", out)
    for n in names:
        (out / n).unlink()
    return out


def _config(d: Path, body: str) -> Path:
    return _file(d / "cfg.py", "import ml_collections\n\n\ndef get_config():\n" + body)


def _broken_dior(world: Path, d: Path) -> Path:
    root = d / "dior"
    shutil.copytree(world / "dior", root)
    (root / "Annotations" / "00002.xml").write_text("")
    return root


def _float_image(d: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).random((32, 32), dtype=np.float32), "F").save(d / "float.tif")
    return d / "float.tif"


def _no_dtype_config(world: Path, d: Path) -> Path:
    cfg = json.loads((world / "model" / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 96  # the weights say 128
    m = _model_without(world, d)
    (m / "config.json").write_text(json.dumps(cfg))
    return m


SFT = ["sft", "--config", TINY_SFT]
GRPO = ["grpo", "--config", TINY_GRPO]
ABLATE = ["ablate", "--config", REPO / "configs" / "ablation_demo.py"]


def _other_shape_model(d: Path) -> Path:
    """A complete model folder of another size than the GRPO fixture (hidden 64, not 128)."""
    from flax import nnx

    from rsground_jax.data.tokenizer import load_small_tokenizer
    from rsground_jax.models import Qwen25VL
    from rsground_jax.models.model_dir import save_model_dir
    from rsground_jax.train.experiment import tiny_for

    tok = load_small_tokenizer()
    cfg = tiny_for(tok, text_layers=1, vision_depth=1)
    save_model_dir(Qwen25VL(cfg, rngs=nnx.Rngs(0)), d / "other", tokenizer=tok,
                   prompt_spec={"system": None, "question": "{expression}", "max_pixels": 12544, "answer_style": "cot"})
    return d / "other"

def _ablation_config(d: Path, change: str) -> Path:
    """An ablation config file: configs/ablation_demo.py with one Python statement applied to it (`c`)."""
    path = d / "ablation.py"
    path.write_text(f"import importlib.util\n"
                    f"spec = importlib.util.spec_from_file_location('demo', {str(REPO / 'configs' / 'ablation_demo.py')!r})\n"
                    f"demo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(demo)\n\n\n"
                    f"def get_config():\n    c = demo.get_config()\n    {change}\n    return c\n")
    return path

# id: (build the case's arguments from (its folder, the shared inputs), what the line must name)
CASES = {
    # ------------------------------------------------------------------------------------------------ data
    "data synth --num-images 0": (lambda d, w: ["data", "synth", "--out", d / "s", "--num-images", "0"],
                                  ["--num-images", "positive integer, got 0"]),
    "data synth --workers -2": (lambda d, w: ["data", "synth", "--out", d / "s", "--num-images", "4", "--workers", "-2"],
                                ["--workers", "got -2"]),
    "data synth into a used folder": (lambda d, w: ["data", "synth", "--out", _file(d / "mine" / "keep.txt").parent,
                                                    "--num-images", "4"], ["mine", "not empty"]),
    "data synth --overwrite of a folder that holds no synthetic set": (
        lambda d, w: ["data", "synth", "--out", _file(d / "mine" / "keep.txt").parent, "--num-images", "4",
                      "--overwrite"], ["mine", "not empty"]),
    "data synth into a file": (lambda d, w: ["data", "synth", "--out", _file(d / "f.txt"), "--num-images", "4"],
                               ["f.txt", "is a file"]),
    "data synth --preset huge": (lambda d, w: ["data", "synth", "--out", d / "s", "--num-images", "4", "--preset", "huge"],
                                 ["unknown preset 'huge'"]),
    "data synth --image-size 200 100": (lambda d, w: ["data", "synth", "--out", d / "s", "--num-images", "4",
                                                      "--image-size", "200", "100"], ["image_size", "increasing"]),
    "data synth --splits train=x": (lambda d, w: ["data", "synth", "--out", d / "s", "--num-images", "4", "--splits",
                                                  "train=x"], ["--splits", "train=x"]),
    "data tokenizer --vocab-size 0": (lambda d, w: ["data", "tokenizer", "--out", d / "t", "--vocab-size", "0"],
                                      ["--vocab-size", "got 0"]),
    "data tokenizer --vocab-size 100": (lambda d, w: ["data", "tokenizer", "--out", d / "t", "--vocab-size", "100"],
                                        ["--vocab-size 100", "at least 263"]),
    "data tokenizer into a used folder": (lambda d, w: ["data", "tokenizer", "--out", _file(d / "t" / "a.txt").parent],
                                          ["not empty"]),
    "data check of a missing folder": (lambda d, w: ["data", "check", d / "nope", "--split", "test"], ["nope", "no such"]),
    "data check --format coco": (lambda d, w: ["data", "check", w / "dior", "--split", "test", "--format", "coco"],
                                 ["unknown format 'coco'"]),
    "data check --on-error raise of a set with an empty XML": (
        lambda d, w: ["data", "check", _broken_dior(w, d), "--split", "test", "--on-error", "raise"],
        ["test.txt", "object index 4 cannot be trusted", "00002.xml is unparsable XML"]),
    "data check of a non-UTF-8 split file": (
        lambda d, w: ["data", "check", _split_bytes(w, d, b"0\n\xff\xfe\n"), "--split", "test", "--on-error", "raise"],
        ["test.txt", "not a UTF-8 text file"]),
    "data check --clip-tolerance -1": (lambda d, w: ["data", "check", w / "dior", "--split", "test", "--clip-tolerance",
                                                     "-1"], ["--clip-tolerance", "got -1"]),
    "data show --count 0": (lambda d, w: ["data", "show", w / "dior", "--split", "test", "--count", "0"], ["--count"]),
    "data tfds of a missing folder": (lambda d, w: ["data", "tfds", "--manual-dir", d / "nope", "--data-dir", d / "tf"],
                                      ["nope", "no such directory"]),
    # ------------------------------------------------------------------------------------------------- sft
    "sft with a missing config": (lambda d, w: ["sft", "--config", d / "no.py"], ["no.py", "no such config file"]),
    "sft with a config that does not parse": (lambda d, w: ["sft", "--config", _file(d / "bad.py", "def get_config(:\n")],
                                              ["bad.py", "failed to load (SyntaxError"]),
    "sft with a typo in the config file": (
        lambda d, w: ["sft", "--config", _config(d, "    c = ml_collections.ConfigDict(); c.sed = 1\n    return c\n")],
        ["cfg.py", "unknown config key 'sed'"]),
    "sft with an unknown override": (lambda d, w: [*SFT, "optim.lr=3"], ["unknown config key 'optim'"]),
    "sft with steps=0": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.steps=0"],
                         ["tiny_sft.py", "stages.0.steps must be a positive integer, got 0"]),
    "sft with negative steps": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.steps=-3"], ["stages.0.steps", "-3"]),
    "sft with accum_steps=0": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.accum_steps=0"],
                               ["stages.0.accum_steps", "got 0"]),
    "sft with batch_size=0": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.batch_size=0"], ["stages.0.batch_size"]),
    "sft with log_every=0": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "log_every=0"], ["log_every", "got 0"]),
    "sft with checkpoint_every=-1": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "checkpoint_every=-1"],
                                     ["checkpoint_every", "got -1"]),
    "sft with a string for the seed": (lambda d, w: [*SFT, "seed=abc"], ["seed is a int, got str"]),
    "sft with an unknown synthetic preset": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.synth.preset=huge"],
                                             ["stages.0.synth.preset", "huge"]),
    "sft with a question without {expression}": (lambda d, w: [*SFT, f"workdir={d / 'w'}", "template_question=Where?"],
                                                 ["template_question", "{expression}"]),
    "sft with a tiny model of impossible shapes": (
        lambda d, w: [*SFT, f"workdir={d / 'w'}", "tiny_options={'text_layers': 2, 'mrope_section': (1, 2, 3)}"],
        ["tiny_sft.py", "tiny_options", "mrope_section"]),
    "sft with a tiny option that does not exist": (
        lambda d, w: [*SFT, f"workdir={d / 'w'}", "tiny_options={'layers': 2}"], ["tiny_sft.py", "layers"]),
    "sft from a missing model folder": (lambda d, w: [*SFT, f"workdir={d / 'w'}", f"init={d / 'none'}", "tokenizer=small"],
                                        ["none", "not a directory"]),
    "sft with a workdir under a file": (lambda d, w: [*SFT, f"workdir={_file(d / 'f.txt')}/w"], ["f.txt"]),
    "sft into a used output folder": (lambda d, w: [*SFT, f"workdir={d / 'w'}", f"output={_file(d / 'out' / 'a').parent}"],
                                      ["out", "output folder is not empty"]),
    "sft --resume on a folder of other files": (lambda d, w: [*SFT, f"workdir={_file(d / 'w' / 'mine.txt').parent}",
                                                              "--resume"], ["holds files that no rsground sft run recorded",
                                                                            "mine.txt"]),
    "sft with a stage named '..' (its folder would be the workdir's parent)": (
        lambda d, w: [*SFT, f"workdir={d / 'w'}", "stages.0.name='..'"], ["stages.0.name must be a name", "'..'"]),
    # ------------------------------------------------------------------------------------------------ eval
    "eval of a missing dataset": (lambda d, w: ["eval", "--data", d / "nope", "--model", w / "model"],
                                  ["nope", "dataset folder does not exist"]),
    "eval of a missing model": (lambda d, w: ["eval", "--data", w / "dior", "--model", d / "nope"],
                                ["nope", "no such model directory"]),
    "eval --batch-size 0": (lambda d, w: ["eval", "--data", w / "dior", "--batch-size", "0"], ["--batch-size", "got 0"]),
    "eval --max-new-tokens 0": (lambda d, w: ["eval", "--data", w / "dior", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    "eval --max-new-tokens -5": (lambda d, w: ["eval", "--data", w / "dior", "--max-new-tokens", "-5"], ["got -5"]),
    "eval --limit 0": (lambda d, w: ["eval", "--data", w / "dior", "--limit", "0"], ["--limit", "got 0"]),
    "eval --devices 999": (lambda d, w: ["eval", "--data", w / "dior", "--model", w / "model", "--devices", "999",
                                         "--out", d / "o"], ["--devices 999", "this host has"]),
    "eval --format xyz": (lambda d, w: ["eval", "--data", w / "dior", "--model", w / "model", "--format", "xyz"],
                          ["--format 'xyz'"]),
    "eval --out under a file": (lambda d, w: ["eval", "--data", w / "dior", "--model", w / "model", "--out",
                                              f"{_file(d / 'f.txt')}/o"], ["--out", "f.txt is a file"]),
    "eval of a converted folder (no tokenizer, no prompt file)": (
        lambda d, w: ["eval", "--data", w / "dior", "--model", _model_without(w, d, "tokenizer.json",
                                                                             "tokenizer_config.json", "rsground_prompt.json")],
        ["not a complete model folder", "a tokenizer", "rsground_prompt.json"]),
    "eval of a folder with a tokenizer but no prompt file": (
        lambda d, w: ["eval", "--data", w / "dior", "--model", _model_without(w, d, "rsground_prompt.json")],
        ["lacks rsground_prompt.json"]),
    "eval of a folder without weights": (
        lambda d, w: ["eval", "--data", w / "dior", "--model", _model_without(w, d, "model.safetensors")],
        ["lacks weights"]),
    "eval with a malformed prompt file": (
        lambda d, w: ["eval", "--data", w / "dior", "--model", w / "model", "--prompt-spec", _file(d / "p.json", "{")],
        ["p.json", "not valid JSON"]),
    "eval of a set whose XML is cut short": (
        lambda d, w: ["eval", "--data", _broken_dior(w, d), "--model", w / "model", "--out", d / "o"],
        ["test.txt", "cannot be trusted"]),
    # --------------------------------------------------------------------------------------------- predict
    "predict of a missing image": (lambda d, w: ["predict", "--image", d / "no.jpg", "--query", "the ship"],
                                   ["no.jpg", "no such image file"]),
    "predict of a file that is no image": (lambda d, w: ["predict", "--image", w / "notes.txt", "--query", "the ship",
                                                         "--out", d / "o.png"], ["notes.txt", "corrupt or unreadable"]),
    "predict of a floating-point image": (lambda d, w: ["predict", "--image", _float_image(d), "--query", "the ship",
                                                        "--out", d / "o.png"], ["float.tif", "floating-point"]),
    "predict with an empty query": (lambda d, w: ["predict", "--image", w / "image.png", "--query", "  "],
                                    ["--query is empty"]),
    "predict --out x.txt": (lambda d, w: ["predict", "--image", w / "image.png", "--query", "the ship", "--out",
                                          d / "x.txt"], ["x.txt", "not an image file name"]),
    "predict --max-new-tokens 0": (lambda d, w: ["predict", "--image", w / "image.png", "--query", "a", "--max-new-tokens",
                                                 "0"], ["--max-new-tokens"]),
    # --------------------------------------------------------------------------------------------- convert
    "convert of a missing folder": (lambda d, w: ["convert", d / "nope", d / "out", "--to", "hf"], ["nope", "no such"]),
    "convert into a used folder": (lambda d, w: ["convert", w / "model", _file(d / "out" / "adapter.safetensors").parent,
                                                 "--to", "hf"], ["out", "not empty"]),
    "convert into the source": (lambda d, w: ["convert", w / "model", w / "model", "--to", "hf"], ["same directory"]),
    "convert --max-shard-size 0": (lambda d, w: ["convert", w / "model", d / "out", "--to", "hf", "--max-shard-size", "0"],
                                   ["--max-shard-size", "got 0"]),
    "convert of a folder with the wrong shapes": (lambda d, w: ["convert", _no_dtype_config(w, d), d / "out", "--to", "hf"],
                                                  ["model/config.json", "mrope_section"]),
    "convert of an empty folder": (lambda d, w: ["convert", _dir(d / "empty"), d / "out", "--to", "orbax"],
                                   ["empty", "no model.safetensors"]),
    # ------------------------------------------------------------------------------------------------ grpo
    "grpo grpo.num_generations=1": (lambda d, w: [*GRPO, f"workdir={d / 'w'}", "grpo.num_generations=1"],
                                    ["grpo.num_generations must be an integer >= 2, got 1"]),
    "grpo batch_size=6 with groups of 4": (lambda d, w: [*GRPO, f"workdir={d / 'w'}", "batch_size=6"],
                                           ["batch_size=6", "groups of grpo.num_generations=4", "multiple of 4"]),
    "grpo a reward that does not exist": (lambda d, w: [*GRPO, f"workdir={d / 'w'}", "rewards={'iuo': 1.0}"],
                                          ["reward 'iuo' does not exist", "positional"]),
    "grpo a reward option that does not exist": (
        lambda d, w: [*GRPO, f"workdir={d / 'w'}", "reward_options={'positional': {'iou_wieght': 0.8}}"],
        ["reward_options.positional.iou_wieght", "its options: ['iou_weight', 'scale']"]),
    "grpo a reward option out of range": (
        lambda d, w: [*GRPO, f"workdir={d / 'w'}", "reward_options={'hit': {'threshold': 50}}"],
        ["reward_options.hit.threshold=50", "in [0, 1]"]),
    "grpo a reference of another shape": (
        lambda d, w: [*GRPO, f"workdir={d / 'w'}", f"reference={_other_shape_model(d)}"],
        ["reference", "other", "has shape", "the reference must be the same model"]),
    "grpo a prompt longer than max_prompt_length": (
        lambda d, w: [*GRPO, f"workdir={d / 'w'}", "data={'synth': None, 'data_root': '%s', 'prompts': 0}" % (w / "dior"),
                      "max_prompt_length=40"],
        ["dior", "longer than the largest length bucket 40"]),
    "grpo from a model folder without a prompt file": (
        lambda d, w: [*GRPO, f"workdir={d / 'w'}", f"init={_model_without(w, d, 'rsground_prompt.json')}"],
        ["init", "rsground_prompt.json"]),
    "grpo grpo.kl_estimator=k2": (lambda d, w: [*GRPO, f"workdir={d / 'w'}", "grpo.kl_estimator=k2"],
                                  ["grpo.kl_estimator must be one of ['k1', 'k3'], got 'k2'"]),
    "sft a grpo stage whose batch does not divide into groups": (
        lambda d, w: ["sft", "--config", SFT_GRPO, f"workdir={d / 'w'}", "stages.1.batch_size=6"],
        ["stages.1.batch_size=6", "groups of grpo.num_generations=4"]),
    "sft a grpo stage with a reward that does not exist": (
        lambda d, w: ["sft", "--config", SFT_GRPO, f"workdir={d / 'w'}", "stages.1.rewards={'iuo': 1.0}"],
        ["stages.1.rewards", "reward 'iuo' does not exist"]),
    # ---------------------------------------------------------------------------------------------- ablate
    "ablate a fresh test set drawn with the benchmark's own seed": (
        lambda d, w: [*ABLATE, f"workdir={d / 'w'}", "test_data.num_images=100", "test_data.data_seed=1234"],
        ["test_data.data_seed 1234 is the benchmark's data_seed", "needs another seed"]),
    "ablate a fresh test set of -5 images": (
        lambda d, w: [*ABLATE, f"workdir={d / 'w'}", "test_data.num_images=-5"],
        ["test_data.num_images must be an integer >= 0", "-5"]),
    "ablate a variant whose name would leave the workdir": (
        lambda d, w: ["ablate", "--config", _ablation_config(d, "c.variants[0]['name'] = '..'"), f"workdir={d / 'w'}"],
        ["variants.0.name must be a name (letters, digits", "'..'"]),
    "ablate a variant without a label": (
        lambda d, w: ["ablate", "--config", _ablation_config(d, "del c.variants[0]['label']"), f"workdir={d / 'w'}"],
        ["ablation.py", "variants.0.label is missing"]),
    # ------------------------------------------------------------------------------------------------ demo
    "demo --steps -1": (lambda d, w: ["demo", "--steps", "-1"], ["--steps", "got -1"]),
    "demo --grpo-steps -2": (lambda d, w: ["demo", "--grpo-steps", "-2"], ["--grpo-steps", "got -2"]),
    "demo --batch-size 0": (lambda d, w: ["demo", "--batch-size", "0"], ["--batch-size"]),
    "demo --num-images 0": (lambda d, w: ["demo", "--num-images", "0"], ["--num-images"]),
    "demo --lr -1": (lambda d, w: ["demo", "--lr", "-1"], ["--lr", "positive number"]),
    "demo from a missing base": (lambda d, w: ["demo", "--base", d / "nope", "--workdir", d / "w"], ["nope", "no model"]),
    "demo from a base without a prompt file": (
        lambda d, w: ["demo", "--base", _model_without(w, d, "rsground_prompt.json"), "--workdir", d / "w"],
        ["--base", "rsground_prompt.json"]),
    "demo in a folder of other files": (lambda d, w: ["demo", "--workdir", _file(d / "w" / "mine.txt").parent],
                                        ["holds files that no rsground demo run recorded"]),
}


def _split_bytes(world: Path, d: Path, data: bytes) -> Path:
    root = d / "dior"
    shutil.copytree(world / "dior", root)
    (root / "test.txt").write_bytes(data)
    return root


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_there_are_at_least_30_bad_inputs_over_all_subcommands():
    commands = {name.split()[0] for name in CASES}
    assert len(CASES) >= 30 and commands == {"data", "sft", "grpo", "eval", "predict", "convert", "demo", "ablate"}


@pytest.fixture(scope="module")
def refused(tmp_path_factory, world):
    """Every case run once, three at a time (each is a short process, mostly starting Python): per case, its
    folder's snapshot before and after, and the command's result. The shared inputs are compared at the end."""
    world_before = snapshot(world)

    def run(name):
        d = tmp_path_factory.mktemp("case")
        args = CASES[name][0](d, world)
        before = snapshot(d)
        result = rsground(*args, cwd=d)
        return before, result, snapshot(d)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        out = dict(zip(CASES, pool.map(run, CASES)))
    yield out
    assert snapshot(world) == world_before, "a case changed the shared inputs"


@pytest.mark.slow  # the cases' module fixture runs every command once: about 2.5 minutes
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, refused):
    before, result, after = refused[name]
    assert_refused(result, *CASES[name][1])
    assert after == before, "the refused command changed files"
