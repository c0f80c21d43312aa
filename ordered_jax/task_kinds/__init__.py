"""Task kinds beyond the built-ins: each module here registers one with
``ordered_jax.tasks.register_kind`` and is imported by ``ordered_jax.tasks`` (a new task is
one file: docs/extending.md)."""
