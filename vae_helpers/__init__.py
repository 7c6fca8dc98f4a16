"""vae_helpers: variational autoencoders on MNIST with TensorFlow Probability.

Importing the package has no side effects: no seeding, no plotting state, and
TensorFlow is loaded (quietly, see ``vae_helpers.backend``) only when a module that
needs it is imported. Modules are imported explicitly, for example
``from vae_helpers import model, training``.
"""

__version__ = "0.1.0"

__all__ = ["set_seed", "__version__"]


def __getattr__(name):
    if name == "set_seed":
        from vae_helpers.seeding import set_seed

        return set_seed
    raise AttributeError(f"module 'vae_helpers' has no attribute {name!r}")
