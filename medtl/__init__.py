"""medtl: transfer learning and domain adaptation for medical imaging."""

from medtl.errors import MedtlError
from medtl.runtime import configure_threads, keep_freed_memory

configure_threads()  # before anything imports torch: pools sized to this process's CPUs, short spins
keep_freed_memory()  # no page faults for every training step's activations (glibc)

__version__ = "0.1.0"
__all__ = ["MedtlError", "__version__"]
