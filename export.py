"""Export a checkpoint's net: `python export.py ckpt_path=... format=onnx|torchscript|...`."""

from imgcls.export import main

if __name__ == "__main__":
    main()
