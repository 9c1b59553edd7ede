"""SigPhi model: shapes, loss and label masking, generation with a KV cache, batching, saving, training switches."""

import json
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from modeling import SigPhiForConditionalGeneration, SigPhiModel
from modeling.transformers_compat import enable_activation_checkpointing
from tests.conftest import chat, random_image
from train.sigphi.tiny import build_tiny_sigphi

LM_LORA_REGEX = r".*language_model.*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


def inputs_for(processor, answers=None, questions=("What digit is shown in this image?",), seeds=(0,), **kwargs):
    """Processor inputs for one image per question; with `answers`, full conversations for training."""
    texts = [chat(processor, q, answer=a, add_generation_prompt=answers is None)
             for q, a in zip(questions, answers or [None] * len(questions))]
    images = [[random_image(seed)] for seed in seeds]
    return processor(text=texts, images=images, return_tensors="pt", padding=True, **kwargs)


def test_forward_gives_logits_over_the_vocabulary_and_a_loss(tiny):
    model, processor = tiny
    inputs = inputs_for(processor, answers=["7"])
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (1, processor.image_seq_length, model.config.text_config.hidden_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_base_model_returns_hidden_states_after_the_image_merge(tiny):
    """TRL's fused LM head reads `model.model(...).last_hidden_state`: it must depend on the image."""
    model, processor = tiny
    inputs = inputs_for(processor)
    with torch.no_grad():
        a = model.model(**inputs).last_hidden_state
        b = model.model(**{**inputs, "pixel_values": inputs["pixel_values"].flip(-1)}).last_hidden_state
    assert a.shape == (*inputs["input_ids"].shape, model.config.text_config.hidden_size)
    assert not torch.allclose(a, b)


def test_labels_at_image_tokens_and_padding_do_not_count(tiny):
    model, processor = tiny
    inputs = inputs_for(processor, answers=["7", "a longer answer"], questions=["Q?", "Q?"], seeds=(0, 1),
                        padding_side="right")
    labels = inputs["input_ids"].clone()
    scrambled = labels.clone()
    ignored = (labels == processor.image_token_id) | (inputs["attention_mask"] == 0)
    assert ignored.sum() > 2 * processor.image_seq_length  # image tokens and some padding are present
    scrambled[ignored] = 42
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
        loss_scrambled = model(**inputs, labels=scrambled).loss
        manual = labels.masked_fill(ignored, -100)
        loss_manual = model(**inputs, labels=manual).loss
    assert torch.allclose(loss, loss_scrambled) and torch.allclose(loss, loss_manual)


def test_mismatch_between_image_tokens_and_features_names_both_numbers(tiny):
    model, processor = tiny
    inputs = inputs_for(processor)
    extra_image = torch.cat([inputs["pixel_values"], inputs["pixel_values"]])
    with pytest.raises(ValueError, match=r"has 16 <image> tokens but the 2 image\(s\) give 32 features"):
        model(input_ids=inputs["input_ids"], pixel_values=extra_image)


def test_inputs_embeds_with_pixel_values_equal_the_input_ids_path(tiny):
    model, processor = tiny
    inputs = inputs_for(processor)
    with torch.no_grad():
        from_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        from_embeds = model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"],
                            attention_mask=inputs["attention_mask"]).logits
    assert torch.allclose(from_ids, from_embeds, atol=1e-6)


def test_hidden_states_attentions_and_tuple_outputs_are_honoured():
    model, processor = build_tiny_sigphi(seed=6)
    model.set_attn_implementation("eager")  # SDPA computes no attention weights to return
    inputs = inputs_for(processor)
    n_layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**inputs, return_dict=False)
    assert len(out.hidden_states) == n_layers + 1
    assert len(out.attentions) == n_layers
    # The vision tower's too, one per block (+ the patch embeddings), attention rows summing to 1.
    depth = len(model.model.vision_tower.blocks)
    assert len(out.image_outputs.hidden_states) == depth + 1 and len(out.image_outputs.attentions) == depth
    assert torch.allclose(out.image_outputs.attentions[0].sum(-1), torch.ones(()), atol=1e-5)
    # Reading the tower's attention maps runs timm's written-out softmax instead of fused SDPA: equal up to rounding.
    assert isinstance(as_tuple, tuple) and torch.allclose(as_tuple[0], out.logits, atol=1e-5)


def test_greedy_generate_with_kv_cache_equals_without(tiny, generate_kwargs):
    model, processor = tiny
    inputs = inputs_for(processor)
    with torch.no_grad():
        cached = model.generate(**inputs, **generate_kwargs)
        uncached = model.generate(**inputs, **generate_kwargs, use_cache=False)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + generate_kwargs["max_new_tokens"]
    assert torch.equal(cached, uncached)


def test_pixel_values_are_encoded_only_on_the_first_generation_step(tiny, generate_kwargs):
    model, processor = tiny
    encoded = []
    original = model.model.get_image_features
    model.model.get_image_features = lambda pixel_values, **kwargs: (encoded.append(pixel_values.shape)
                                                                      or original(pixel_values, **kwargs))
    try:
        with torch.no_grad():
            model.generate(**inputs_for(processor), **generate_kwargs)
    finally:
        del model.model.get_image_features
    assert encoded == [(1, 3, 32, 32)]


def test_left_padded_batch_generates_what_each_prompt_generates_alone(tiny, generate_kwargs):
    model, processor = tiny
    questions = ["Hi?", "What digit is shown in this image?", "Is this a very long question, or not?"]
    seeds = (0, 1, 2)
    with torch.no_grad():
        batch = inputs_for(processor, questions=questions, seeds=seeds, padding_side="left")
        together = model.generate(**batch, **generate_kwargs)[:, batch["input_ids"].shape[1]:]
        for row, (question, seed) in enumerate(zip(questions, seeds)):
            single = inputs_for(processor, questions=[question], seeds=[seed])
            alone = model.generate(**single, **generate_kwargs)[:, single["input_ids"].shape[1]:]
            assert torch.equal(together[row], alone[0]), f"prompt {row} differs in a batch"


def test_save_and_load_gives_identical_logits_through_every_auto_class(tiny, tiny_dir):
    model, processor = tiny
    inputs = inputs_for(processor)
    with torch.no_grad():
        reference = model(**inputs).logits
        for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
            loaded = auto_class.from_pretrained(tiny_dir).eval()
            assert isinstance(loaded, SigPhiForConditionalGeneration)
            assert torch.equal(loaded(**inputs).logits, reference)
        base = AutoModel.from_pretrained(tiny_dir).eval()
        assert isinstance(base, SigPhiModel)
        assert torch.equal(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)


def test_saved_folder_is_self_contained_safetensors_only(tiny_dir):
    files = {path.name for path in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_sigphi.py", "configuration_sigphi.py",
            "processing_sigphi.py", "processor_config.json", "chat_template.jinja", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    auto_map = json.loads((tiny_dir / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"}
    project_import = re.compile(r"^\s*(from|import) (configuration|modeling|processing|train)\b", re.MULTILINE)
    for name in files:
        if name.endswith(".py"):
            assert not project_import.search((tiny_dir / name).read_text()), f"{name} imports the project"


def test_freeze_switches_select_what_trains(tiny):
    model, _ = build_tiny_sigphi(seed=1)
    model.freeze_vision_tower()
    model.freeze_language_model()
    trainable = {name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"multi_modal_projector"}
    model.freeze_language_model(False)
    assert model.lm_head.weight.requires_grad and not model.vision_tower.patch_embed.proj.weight.requires_grad


def test_gradient_checkpointing_with_frozen_tower_still_trains_lora_adapters():
    model, processor = build_tiny_sigphi(seed=2)
    model.train()
    model.freeze_vision_tower()
    enable_activation_checkpointing(model, {"use_reentrant": True})
    model.enable_input_require_grads()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=LM_LORA_REGEX))
    assert model.vision_tower.grad_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.language_model.layers)
    inputs = inputs_for(processor, answers=["7"])
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    lora_grads = {n: p.grad for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads.values())
    assert not any("vision_tower" in n for n in lora_grads)


def test_gradient_checkpointing_of_a_trainable_tower_gives_the_same_gradients():
    model, processor = build_tiny_sigphi(seed=3)
    model.train()
    inputs = inputs_for(processor, answers=["7"])
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    plain = model.vision_tower.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    enable_activation_checkpointing(model)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert torch.allclose(model.vision_tower.blocks[0].attn.qkv.weight.grad, plain, atol=1e-6)


def test_resizing_token_embeddings_updates_the_lm_head_and_config():
    model, _ = build_tiny_sigphi(seed=4)
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().num_embeddings == old + 8
    assert model.lm_head.out_features == old + 8
    assert model.config.get_text_config().vocab_size == old + 8


def test_sdpa_attention_is_the_default(tiny):
    model, _ = tiny
    assert model.config.text_config._attn_implementation == "sdpa"


def test_an_earlier_vision_layer_can_feed_the_projector():
    model, processor = build_tiny_sigphi(seed=5, vision_feature_layer=-2)
    features = model.get_image_features(inputs_for(processor)["pixel_values"])
    assert features.pooler_output.shape == (1, processor.image_seq_length, model.config.text_config.hidden_size)
    # The tower's own features (vision width) of the chosen block come back beside the projected ones.
    assert features.last_hidden_state.shape == (1, processor.image_seq_length, model.config.vision_config.hidden_size)


@pytest.mark.parametrize("bits", [4, 8])
def test_kbit_loading_quantizes_the_language_model_only(tiny_dir, bits):
    """bitsandbytes runs on CPU: the decoder's linears are quantized; tower, projector and LM head are not."""
    from transformers import BitsAndBytesConfig

    quantization = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.bfloat16) if bits == 4
                    else BitsAndBytesConfig(load_in_8bit=True))
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, quantization_config=quantization,
                                                        dtype=torch.bfloat16)
    linear_kinds = {name: type(module).__name__ for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)}
    quantized = {name for name, kind in linear_kinds.items() if kind != "Linear"}
    assert quantized and all(".language_model.layers." in name for name in quantized)
    assert all(kind == "Linear" for name, kind in linear_kinds.items()
               if "vision_tower" in name or "multi_modal_projector" in name or name == "lm_head")
