"""Small nets of our own, by the name configs use (`model.net.name=...`): NETS, the registry the
zoo looks in first (models/zoo.py)."""

from torch import nn

from imgcls.models.nets.cifar_quick import CifarQuick
from imgcls.models.nets.fast_cifar import FastCifar
from imgcls.models.nets.lenet import LeNet
from imgcls.models.nets.resnet_cifar import ResNetCifar
from imgcls.utils.registry import Registry

NETS: Registry[type[nn.Module]] = Registry(
    "model.net.name", more="any torchvision classification model, or timm/<name>"
)
NETS.add("cifar_quick", CifarQuick)
NETS.add("fast_cifar", FastCifar)
NETS.add("lenet", LeNet)
NETS.add("resnet_cifar", ResNetCifar)
