"""medtl: transfer learning and domain adaptation for medical imaging."""

from medtl.errors import MedtlError

__version__ = "0.1.0"
__all__ = ["MedtlError", "__version__"]
