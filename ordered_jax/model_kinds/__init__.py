"""Models beyond the built-ins: each module here registers one with
``ordered_jax.models.register_model`` and is imported by ``ordered_jax.models``."""
