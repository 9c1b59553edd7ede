"""Stand-in for transformers' `tests/exporters/test_export.py`, which the PyPI sdist does not ship.

`ModelTesterMixin` inherits `ExportTesterMixin`; without this file the common tests cannot even be imported. An
empty mixin means the `torch.export` tests are not part of this peer run (`_can_compile_fullgraph = False` on
SigPhi: the timm tower is not export-clean).
"""


class ExportTesterMixin:
    pass
