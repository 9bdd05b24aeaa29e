import pytest
import torch

from medtl.adapt.discriminators import ConvDomainDiscriminator, DomainDiscriminator
from medtl.errors import MedtlError


def test_vector_discriminator_shape():
    d = DomainDiscriminator(6, hidden=8)
    assert d(torch.randn(5, 6)).shape == (5, 1)


@pytest.mark.parametrize("dims,spatial", [(2, (6, 5)), (3, (4, 5, 3))])
def test_map_discriminator_2d_3d(dims, spatial):
    d = ConvDomainDiscriminator(dims, in_channels=3, hidden=4)
    x = torch.randn(2, 3, *spatial)
    assert d(x).shape == (2, 1, *spatial)
    pooled = ConvDomainDiscriminator(dims, in_channels=3, hidden=4, pooled=True)
    assert pooled(x).shape == (2, 1)


def test_map_discriminator_refuses_wrong_rank():
    d = ConvDomainDiscriminator(3, in_channels=2, hidden=4)
    with pytest.raises(MedtlError, match="spatial dims"):
        d(torch.randn(2, 2, 4, 4))
    with pytest.raises(MedtlError):
        ConvDomainDiscriminator(4, in_channels=2)
