"""Small nets of our own, by the name configs use (`model.net.name=...`)."""

from imgcls.models.nets.cifar_quick import CifarQuick
from imgcls.models.nets.fast_cifar import FastCifar
from imgcls.models.nets.lenet import LeNet
from imgcls.models.nets.resnet_cifar import ResNetCifar

OUR_NETS = {
    "cifar_quick": CifarQuick,
    "fast_cifar": FastCifar,
    "lenet": LeNet,
    "resnet_cifar": ResNetCifar,
}
