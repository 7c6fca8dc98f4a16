"""vae_helpers: variational autoencoders on MNIST with TensorFlow Probability.

Importing the package loads TensorFlow quietly (see ``vae_helpers._tf``) and
has no other side effect: no seeding, no plotting state. Modules are imported
explicitly, for example ``from vae_helpers import model, train``.
"""

from vae_helpers import _tf  # noqa: F401  (TensorFlow's logging set-up, once)
from vae_helpers.seeding import set_seed

__version__ = "0.1.0"

__all__ = ["set_seed", "__version__"]
