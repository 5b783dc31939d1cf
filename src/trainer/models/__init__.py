"""The backbone catalogue: paper-faithful models on timm.

`create_model(name)` builds any catalogue entry (or `timm/<name>` for any timm model) through timm;
`list_models(pattern)` lists the catalogue. Importing this package registers every family.
"""

from trainer.models import (  # noqa: F401  (registers the families)
    alexnet,
    bn_inception,
    darknet,
    densenet,
    densenet_cifar,
    efficientnet,
    fractalnet,
    googlenet,
    inception_resnet_v1,
    inception_v3,
    inception_v4,
    mobilenet_v1,
    mobilenet_v2,
    nasnet,
    preact_resnet,
    resnet,
    resnet_cifar,
    resnext,
    resnext_cifar,
    shufflenet_v1,
    shufflenet_v2,
    squeezenet,
    vgg,
    wide_resnet,
    xception,
)
from trainer.models.catalogue import (
    TIMM_PREFIX,
    DataDefaults,
    ModelEntry,
    Paper,
    create_model,
    data_defaults,
    get_entry,
    list_models,
    register,
)
from trainer.models.weights import LoadReport, load_weights, read_state_dict

__all__ = [
    "TIMM_PREFIX",
    "DataDefaults",
    "LoadReport",
    "ModelEntry",
    "Paper",
    "create_model",
    "data_defaults",
    "get_entry",
    "list_models",
    "load_weights",
    "read_state_dict",
    "register",
]
