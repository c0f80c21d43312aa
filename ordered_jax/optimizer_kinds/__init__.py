"""Optimisers beyond the built-ins: each module here registers one with
``ordered_jax.optim.register_optimizer`` and is imported by ``ordered_jax.optim``."""
