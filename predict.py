"""Classify images with a checkpoint: `python predict.py ckpt_path=... input=PATH`."""

from imgcls.predict import main

if __name__ == "__main__":
    main()
