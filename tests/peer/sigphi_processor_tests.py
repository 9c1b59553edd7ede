"""transformers' common processor tests (`ProcessorTesterMixin`) on SigPhi's processor, built locally (no Hub).

Copied by `tests/peer/run.py` into the assembled suite as `tests/models/sigphi/test_processing_sigphi.py`.
"""

import unittest

from transformers import SiglipImageProcessor

from processing import SigPhiProcessor
from train.common.tokenizer import build_byte_level_tokenizer

from ...test_processing_common import ProcessorTesterMixin


class SigPhiProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = SigPhiProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return build_byte_level_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return SiglipImageProcessor(size={"height": 32, "width": 32})

    @staticmethod
    def prepare_processor_dict():
        return {"image_seq_length": 16}
