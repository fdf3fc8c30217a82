"""models/exported.py: a file export.py wrote, run as its users run it inside the model its card
describes, scored by eval.py as its checkpoint is."""

from pathlib import Path

import pytest
import torch

from imgcls.eval import evaluate
from imgcls.export import export
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.test_eval import FOUR_BATCHES, QUICK


def test_an_exported_file_is_scored_as_its_checkpoint_with_the_same_report(
    make_cfg, tmp_path: Path
) -> None:
    """`ckpt_path=<export dir>/model.onnx` (TorchScript, safetensors): the file itself runs, in
    the model its card describes, on the test split preprocessed as the card says (not the data
    config's defaults), and the evaluation report is written as a checkpoint's is."""
    stats = ["data.mean=[0.6,0.5,0.4]", "data.std=[0.1,0.2,0.3]"]
    metrics, _ = train(make_cfg(*QUICK, FOUR_BATCHES, "trainer.max_epochs=1", *stats))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    for fmt, file in [("onnx", "model.onnx"), ("safetensors", "model.safetensors")]:
        out = tmp_path / f"export_{fmt}"
        export(make_cfg(f"ckpt_path={best}", f"format={fmt}", config_name="export", run_dir=out))
        cfg = make_cfg(f"ckpt_path={out / file}", config_name="eval", run_dir=tmp_path / fmt)
        evaluated, objects = evaluate(cfg)
        assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6), fmt
        assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-4), fmt
        assert list(cfg.data.mean) == pytest.approx([0.6, 0.5, 0.4])
        assert (tmp_path / fmt / "per_class.csv").is_file()
        net = objects["model"].net
        assert (type(net).__name__ == "ExportedNet") == (fmt == "onnx")  # runs the file itself
        if fmt == "onnx":  # on torch's share of the cores, as a DDP rank has it (not all)
            threads = net.on_cpu.session.get_session_options().intra_op_num_threads
            assert threads == torch.get_num_threads()
    (tmp_path / "export_onnx" / "model_card.json").unlink()
    onnx_file = tmp_path / "export_onnx" / "model.onnx"
    cfg = make_cfg(f"ckpt_path={onnx_file}", config_name="eval", run_dir=tmp_path / "no_card")
    with pytest.raises(UserError, match=r"model_card\.json export\.py wrote beside it"):
        evaluate(cfg)
