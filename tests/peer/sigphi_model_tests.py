"""transformers' common model tests (`ModelTesterMixin`) on a tiny SigPhi, the way a built-in model is tested.

Copied by `tests/peer/run.py` into a suite assembled from the transformers sdist of the installed version, as
`tests/models/sigphi/test_modeling_sigphi.py`; not collected by the project's own `pytest tests`.
"""

import copy
import tempfile
import unittest
from unittest.mock import patch

import torch
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from configuration import SigPhiConfig
from modeling import SigPhiForConditionalGeneration, SigPhiModel

from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


class SigPhiModelTester:
    """Builds a tiny config (timm SigLIP ViT 8 px / patch 2 = 16 image tokens, a 2-layer Phi-3) and inputs."""

    def __init__(self, parent, batch_size: int = 3, text_seq_length: int = 7):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = True
        self.image_size, self.patch_size, self.num_channels = 8, 2, 3
        self.num_image_tokens = (self.image_size // self.patch_size) ** 2
        self.seq_length = text_seq_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length
        self.image_token_id, self.pad_token_id = 0, 1
        self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 99, 32, 2, 4
        self.vision_config = {
            "timm_model_name": "vit_base_patch16_siglip_224",
            "timm_kwargs": {"img_size": self.image_size, "patch_size": self.patch_size, "embed_dim": 32, "depth": 2,
                            "num_heads": 4},
            "hidden_size": 32, "image_size": self.image_size,
        }
        self.text_config = {
            "model_type": "phi3", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": 37, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_attention_heads,
            "max_position_embeddings": 512, "pad_token_id": self.pad_token_id, "bos_token_id": 2,
            "eos_token_id": 3,
        }

    def get_config(self) -> SigPhiConfig:
        return SigPhiConfig(vision_config=copy.deepcopy(self.vision_config), text_config=dict(self.text_config),
                            image_token_id=self.image_token_id, image_seq_length=self.num_image_tokens)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 4) + 4
        input_ids[:, : self.num_image_tokens] = self.image_token_id
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=torch_device)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


# The common tests decide what a class is (a base model without a loss, an image-text-to-text model trained with
# token labels) from transformers' tables of its built-in classes; SigPhi is listed there for this run, as Llava is.
BUILT_IN_TABLES = {"MODEL_MAPPING_NAMES": "SigPhiModel",
                   "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "SigPhiForConditionalGeneration"}


@require_torch
class SigPhiModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SigPhiModel, SigPhiForConditionalGeneration)
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tables = [patch.dict(getattr(modeling_auto, table), {"sigphi": name})
                      for table, name in BUILT_IN_TABLES.items()]
        for table in cls.tables:
            table.start()

    @classmethod
    def tearDownClass(cls):
        for table in cls.tables:
            table.stop()
        super().tearDownClass()

    def setUp(self):
        self.model_tester = SigPhiModelTester(self)
        if self._testMethodName.startswith("test_model_rope_scaling_from_config"):  # parameterized: one per type
            self.skipTest("runs a decoder without RoPE scaling on 1.5x its max_position_embeddings, which SigPhi "
                          "refuses by design with a ValueError (tests/test_faults.py) rather than answer from "
                          "positions it never saw")

    @unittest.skip("GenerationTesterMixin lives in tests/generation/, which the PyPI sdist does not ship: SigPhi's "
                   "generate is tested by the project's own suite and the compatibility matrix instead")
    def test_generation_tester_mixin_inheritance(self):
        pass

    def test_sdpa_can_dispatch_composite_models(self):
        """The common test reads `config._attn_implementation` off every tower; the vision tower is a timm module,
        which has no transformers config (timm picks fused SDPA itself). The decoder must dispatch as asked."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with tempfile.TemporaryDirectory() as folder:
                model_class(copy.deepcopy(config)).save_pretrained(folder)
                for requested, expected in ((None, "sdpa"), ("eager", "eager")):
                    loaded = model_class.from_pretrained(folder, attn_implementation=requested).base_model
                    self.assertEqual(loaded.language_model.config._attn_implementation, expected)

    def test_mismatching_num_image_tokens(self):
        """Fewer images than image-token groups is an error that names both counts (as Llava's test asks)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            model(**inputs)
            with self.assertRaisesRegex(ValueError, "<image> tokens"):
                model(**{**inputs, "pixel_values": inputs["pixel_values"][-1:]})
