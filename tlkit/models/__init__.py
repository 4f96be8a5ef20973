"""The classic CNN zoo (LeNet-5 to ResNet), exact to the papers; see `tlkit.models._registry`.

Importing a family module registers its architectures in `ZOO`.
"""
from tlkit.models import alexnet, googlenet, lenet, resnet, vgg  # noqa: F401
from tlkit.models._registry import ZOO, Arch, register  # noqa: F401
