"""Domain adaptation: losses (``losses``), gradient reversal (``grl``), discriminators
(``discriminators``), strategies registered by name (``strategies``) and label-free model
selection (``selection``)."""

from medtl.adapt.discriminators import ConvDomainDiscriminator, DomainDiscriminator
from medtl.adapt.grl import GradientReversalLayer, reverse_gradient, warm_start_coefficient
from medtl.adapt.losses import (
    ConditionalDomainAdversarialLoss,
    CORALLoss,
    DomainAdversarialLoss,
    MinimumClassConfusionLoss,
    MultiLinearMap,
    MultipleKernelMMDLoss,
    RandomizedMultiLinearMap,
    mmd2,
)

__all__ = [
    "ConvDomainDiscriminator",
    "DomainDiscriminator",
    "GradientReversalLayer",
    "reverse_gradient",
    "warm_start_coefficient",
    "ConditionalDomainAdversarialLoss",
    "CORALLoss",
    "DomainAdversarialLoss",
    "MinimumClassConfusionLoss",
    "MultiLinearMap",
    "MultipleKernelMMDLoss",
    "RandomizedMultiLinearMap",
    "mmd2",
]
