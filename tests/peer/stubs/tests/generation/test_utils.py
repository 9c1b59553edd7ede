"""Stand-in for transformers' `tests/generation/test_utils.py`, which the PyPI sdist does not ship.

`test_modeling_common` imports `GenerationTesterMixin` only to check whether a tester inherits it. SigPhi's
generation is tested by the project's own suite (KV cache == no cache, batched == alone, pixel values encoded
once) and by the compatibility matrix, not by this peer run.
"""


class GenerationTesterMixin:
    pass
