"""torchrobust model zoo: every model takes float NCHW images in [0, 1] and returns logits.

Normalisation is a layer inside the model (:class:`Normalize`); ``mean=None, std=None`` (the default) means no
normalisation, as in the reprogramming paper's code. Build models by name with :func:`create`::

    model = torchrobust.models.create("resnet18", num_classes=10, width=8)    # the paper's narrow ResNet-18
    model = torchrobust.models.create("wrn28_10", mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    info = torchrobust.data.DATASETS["cifar10"]                               # or the dataset's own statistics
    model = torchrobust.models.create("resnet18", mean=info.mean, std=info.std)

Zoo models describe where defences go (docs/architecture.md, "Model structure hooks"):
``model.nrpm_default_layers()`` and ``model.forge_insertion_points()`` return qualified module names; any other model
(torchvision, timm, your own) is analysed by :mod:`torchrobust.models.structure`. A classifier trained on normalised
input gets its ``Normalize`` layer from :func:`with_normalization`; :func:`timm_model` and :func:`torchvision_model`
build those libraries' classifiers by name, random weights only.
"""

from .ecosystem import timm_model, torchvision_model
from .lenet import LeNet
from .mixer import MLPMixer
from .mlp import MLP
from .normalize import Normalize, Normalized, with_normalization
from .registry import create, list_models, model_kwargs
from .resnet import PreActResNet, ResNet
from .wide_resnet import DMWideResNet, WideResNet

__all__ = ["create", "list_models", "model_kwargs", "Normalize", "MLP", "LeNet", "ResNet", "PreActResNet",
           "WideResNet", "DMWideResNet", "MLPMixer", "Normalized", "with_normalization",
           "timm_model", "torchvision_model"]
