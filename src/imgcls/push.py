"""Share a run as timm loads it: `imgcls-push RUN --repo <user>/<name> [--private]` uploads it to
the Hugging Face Hub, `imgcls-push RUN --local DIR` writes the same folder without uploading.

RUN is a run dir (its checkpoints/best.ckpt), its checkpoints folder or a checkpoint file. The
folder is timm's own format, written by timm's `save_for_hf`: config.json (architecture, its
arguments, num_classes, label_names, and a pretrained_cfg whose mean, std, input_size, crop_pct
and crop_mode are the run's input contract; under `imgcls`, what timm's format has no key for:
the task and the temperature or each class's threshold), model.safetensors, and a README.md
model card with the run's data, recipe and test metrics. Anyone loads it with
`timm.create_model("hf-hub:<user>/<name>", pretrained=True)` (or "local-dir:DIR") and gets the
run's logits; `eval.py`/`predict.py ckpt_path=timm/hf-hub:<user>/<name>` take it back, a
multi-label model as one, at its thresholds. The
folder is checked before it goes anywhere: loaded back with timm, its logits against the run's.

Only timm's nets push: timm builds a net from config.json by its registered architecture name,
which our nets and torchvision's do not have, so a folder of theirs in timm's format would be one
timm cannot load. `imgcls-export` ships those (ONNX, TorchScript, state_dict, safetensors).
"""

import argparse
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from imgcls.input_contract import InputContract
from imgcls.models.loading import classifier_from_checkpoint, read_checkpoint
from imgcls.models.pretrained import PUSHED_OUTPUT_KEYS
from imgcls.utils.errors import UserError, one_line

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# torchvision's Resize (our eval resize, models/../presets.resize_center_crop) is bilinear
INTERPOLATION = "bilinear"
DETAILS = "<details><summary>the run's settled config (.hydra/config.yaml)</summary>"


def checkpoint_of(run: Path) -> tuple[Path, Path | None]:
    """(the checkpoint, its run dir or None) for a run dir, its checkpoints folder or a file."""
    if run.is_dir():
        folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
        run = folder / "best.ckpt"
        if not run.is_file():
            raise UserError(
                f"{folder} has no best.ckpt: name the checkpoint to push (<run>/checkpoints/"
                "last.ckpt, an average) instead."
            )
    elif not run.is_file():
        raise UserError(f"{run} does not exist: pass a run dir or a checkpoint.")
    run_dir = run.parent.parent if run.parent.name == "checkpoints" else None
    return run, run_dir


def timm_data_config(contract: InputContract) -> dict[str, Any]:
    """The input contract as timm's pretrained config says it: timm resizes to
    floor(crop / crop_pct), so crop_pct is nudged down until that floor is exactly our resize."""
    crop_pct = contract.crop / contract.resize
    while math.floor(contract.crop / crop_pct) < contract.resize:
        crop_pct = math.nextafter(crop_pct, 0.0)
    return {
        "input_size": (3, contract.crop, contract.crop),
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "interpolation": INTERPOLATION,
        "mean": tuple(contract.mean),
        "std": tuple(contract.std),
    }


def run_record(run_dir: Path | None) -> tuple[dict[str, Any], list[str], dict[str, float]]:
    """The run's settled config, its command line overrides and its metrics.json (each empty
    where the run dir does not have it)."""
    if run_dir is None:
        return {}, [], {}
    hydra = run_dir / ".hydra"
    config: dict[str, Any] = {}
    if (hydra / "config.yaml").is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(hydra / "config.yaml"), resolve=False)
        config = loaded if isinstance(loaded, dict) else {}
    overrides: list[str] = []
    if (hydra / "overrides.yaml").is_file():
        overrides = [str(o) for o in OmegaConf.load(hydra / "overrides.yaml")]
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return config, overrides, metrics


def model_card(
    timm_name: str,
    hparams: dict[str, Any],
    contract: InputContract,
    class_names: list[str],
    run_dir: Path | None,
) -> str:
    """README.md: what the model is, the data and recipe it was trained with, its test metrics,
    its preprocessing and how to load it (`timm_name`: as timm.create_model names it)."""
    config, overrides, metrics = run_record(run_dir)
    data = config.get("data") or {}
    where = data.get("root") or data.get("path") or data.get("data_dir") or ""
    source = str(data.get("_target_", "")).rsplit(".", 1)[-1]
    trainer, optimizer = config.get("trainer") or {}, config.get("optimizer") or {}
    net = hparams["net"]["name"].removeprefix("timm/")
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    lines = [
        "---",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags: [image-classification, timm, imgcls]",
        "---",
        "",
        f"# {timm_name.split(':', 1)[1]}",
        "",
        f"An image classifier ({net}, {len(class_names)} classes, task "
        f"{hparams.get('task', 'multiclass')}) trained with imgcls.",
        "",
        "## Data",
        "",
        f"- source: {source or 'not recorded'}{f' ({where})' if where else ''}",
        f"- classes ({len(class_names)}): {shown}",
        "",
        "## Recipe",
        "",
        "```",
        "python train.py " + " ".join(f"'{o}'" if " " in o else o for o in overrides)
        if overrides
        else "(the run's command line was not recorded; its whole config is below)",
        "```",
        "",
        f"- optimizer: {str(optimizer.get('_target_', '?')).rsplit('.', 1)[-1]}, "
        f"lr {optimizer.get('lr', '?')}; epochs: {trainer.get('max_epochs', '?')}; "
        f"batch size: {data.get('batch_size', '?')}",
        "",
        DETAILS,
        "",
        "```yaml",
        OmegaConf.to_yaml(OmegaConf.create(config)).rstrip() if config else "(not recorded)",
        "```",
        "",
        "</details>",
        "",
        "## Test metrics",
        "",
    ]
    if tested:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(tested.items())]
    else:
        lines.append("Not recorded (the run has no metrics.json with test metrics).")
    lora = hparams.get("lora") or {}
    if lora.get("rank"):  # beside the optimizer's line
        lines.insert(
            lines.index(DETAILS) - 1,
            f"- LoRA rank {lora['rank']}, alpha {lora.get('alpha')}: merged into the weights here",
        )
    temperature = hparams.get("temperature")
    lines += [
        "",
        "## Preprocessing",
        "",
        f"Resize the short side to {contract.resize} px ({INTERPOLATION}), centre-crop "
        f"{contract.crop} x {contract.crop}, scale to [0, 1], normalize with mean "
        f"{list(contract.mean)} and std {list(contract.std)} (timm's data config of the model "
        "says the same).",
    ]
    if temperature is not None:
        lines.append(f"The run's temperature setting was {temperature!r}: the logits here are raw.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "",
        f'model = timm.create_model("{timm_name}", pretrained=True).eval()',
        "config = timm.data.resolve_data_config(model=model)",
        "transform = timm.data.create_transform(**config)",
        "labels = model.pretrained_cfg['label_names']",
        "```",
        "",
        f"With imgcls: `python predict.py ckpt_path=timm/{timm_name} input=<photos>`.",
        "",
    ]
    return "\n".join(lines)


def write_folder(run: Path, out: Path, timm_name: str) -> Path:
    """Write the timm folder of `run`'s checkpoint into `out` (a new or empty folder), and check
    it: loaded back with timm, it gives the checkpoint's logits. `timm_name`: the name its users
    will load it by (`hf-hub:<user>/<name>` or `local-dir:<out>`), for its model card."""
    ckpt, run_dir = checkpoint_of(run)
    checkpoint = read_checkpoint(ckpt)
    name = checkpoint["hyper_parameters"]["net"]["name"]
    if not str(name).startswith("timm/"):
        raise UserError(
            f"{ckpt} holds {name}, not a timm net: only timm's nets push in timm's format (timm "
            "builds nets by its own architecture names); ship it with imgcls-export instead."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not an empty folder: name a new one.")
    model = classifier_from_checkpoint(checkpoint, ckpt)
    hparams = dict(model.hparams)
    saved = hparams.get("preprocessing") or {}
    if not {"resize", "crop", "mean", "std"} <= saved.keys():
        raise UserError(f"{ckpt} records no input size and normalization (an older checkpoint).")
    contract = InputContract.from_dict(saved)
    # plain weights: loading merges a LoRA run's adapters
    net = model.net.eval().to(memory_format=torch.contiguous_format)
    from timm.models import save_for_hf

    save_for_hf(
        net,
        str(out),
        # timm reads past a key of ours: how the outputs are read (models/pretrained.py)
        model_config={"label_names": model.class_names, "imgcls": pushed_outputs_of(model)},
        safe_serialization=True,
        data_config=timm_data_config(contract),
    )
    card = model_card(timm_name, hparams, contract, model.class_names, run_dir)
    (out / "README.md").write_text(card)
    check_folder(net, out, contract.crop)
    return out


def pushed_outputs_of(model: Any) -> dict[str, Any]:
    """The task, and the temperature or each class's threshold (by name), the model's outputs
    are read with: what timm's format has no key for."""
    said = model.objective.card(model.class_names)
    kept = {key: said[key] for key in PUSHED_OUTPUT_KEYS if key in said}
    return {"task": model.hparams.get("task", "multiclass"), **kept}


@torch.inference_mode()
def check_folder(net: torch.nn.Module, folder: Path, size: int) -> None:
    """The folder loaded as its users will, `timm.create_model("local-dir:...")`, must give the
    net's logits on a random batch."""
    import timm

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    if not torch.allclose(loaded(images), net(images), rtol=1e-4, atol=1e-5):
        raise UserError(f"{folder}: timm loads a net whose logits differ from the run's.")


def push(
    run: Path, repo: str | None = None, private: bool = False, local: Path | None = None
) -> Path | str:
    """`local`: the folder written there; else uploaded to the Hub repo `repo` (created where
    it does not exist, private if asked), its URL returned."""
    if (repo is None) == (local is None):
        raise UserError("Say where to push: --repo <user>/<name> or --local DIR.")
    if local is not None:
        return write_folder(run, local, f"local-dir:{local.resolve()}")
    assert repo is not None
    if not REPO_ID.fullmatch(repo):
        raise UserError(f"--repo {repo}: a Hub repo is <user or org>/<name>.")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as staging:
        folder = write_folder(run, Path(staging) / "model", f"hf-hub:{repo}")
        api = HfApi()
        try:
            url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo,
                folder_path=str(folder),
                repo_type="model",
                commit_message=f"imgcls-push {run.name}",
            )
        except Exception as err:  # no token, no network, no right to the repo
            raise UserError(
                f"Could not upload to {repo} ({type(err).__name__}: {one_line(err)}). Log in "
                "(`hf auth login` or HF_TOKEN) with write access, or write the folder with "
                "--local DIR and upload it yourself."
            ) from err
    return str(url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Share a run in timm's format: uploaded to the Hugging Face Hub (--repo) or "
        "written to a folder (--local)."
    )
    parser.add_argument("run", type=Path, help="a run dir, its checkpoints folder or a .ckpt")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="the Hub repo to upload to: <user or org>/<name>")
    where.add_argument("--local", type=Path, help="write the folder here, without uploading")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args()
    try:
        done = push(args.run, args.repo, args.private, args.local)
    except UserError as err:
        raise SystemExit(f"UserError: {err}") from None
    name = f"local-dir:{done}" if args.local else f"hf-hub:{args.repo}"
    print(f"Pushed to {done}: timm.create_model({name!r}, pretrained=True)")


if __name__ == "__main__":
    main()
