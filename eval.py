"""Evaluate a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/best.ckpt`."""

from imgcls.eval import main

if __name__ == "__main__":
    main()
