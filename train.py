"""Train an image classifier: `python train.py [key=value ...]` (see configs/train.yaml)."""

from imgcls.train import main

if __name__ == "__main__":
    main()
