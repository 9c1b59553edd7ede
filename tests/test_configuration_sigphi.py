"""SigPhiConfig: sub-configs, defaults the model relies on, and lossless round trips."""

import json

from transformers import AutoConfig, Phi3Config

from configuration import SigPhiConfig, SigPhiVisionConfig


def make_config() -> SigPhiConfig:
    return SigPhiConfig(
        vision_config={"timm_model_name": "vit_base_patch16_siglip_224", "timm_kwargs": {"img_size": 32},
                       "hidden_size": 64, "image_size": 32, "vision_feature_layer": -2},
        text_config={"model_type": "phi3", "hidden_size": 128, "num_hidden_layers": 2, "vocab_size": 300},
        image_token_id=5,
        image_seq_length=16,
    )


def test_sub_configs_are_typed_and_text_config_is_found_by_generic_tools():
    config = make_config()
    assert isinstance(config.vision_config, SigPhiVisionConfig)
    assert isinstance(config.text_config, Phi3Config)
    assert config.get_text_config() is config.text_config


def test_timm_kwargs_always_ask_for_token_features_without_pooling_or_head():
    vision = SigPhiVisionConfig(timm_kwargs={"img_size": 32})
    assert vision.timm_kwargs == {"img_size": 32, "num_classes": 0, "global_pool": ""}


def test_dict_round_trip_is_lossless():
    config = make_config()
    restored = SigPhiConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    assert restored.vision_config.vision_feature_layer == -2
    assert restored.text_config.vocab_size == 300


def test_json_round_trip_through_a_saved_folder(tmp_path):
    config = make_config()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sigphi" and saved["vision_config"]["model_type"] == "sigphi_vision"
    restored = SigPhiConfig.from_pretrained(tmp_path)
    assert restored.to_json_string() == config.to_json_string()


def test_auto_config_resolves_the_model_type_once_modeling_is_imported():
    import modeling  # noqa: F401  (registers the Auto classes)

    assert isinstance(AutoConfig.for_model("sigphi"), SigPhiConfig)
