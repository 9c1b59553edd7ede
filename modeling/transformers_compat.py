"""The one place that knows how transformers releases differ (supported: 5.15 up to the newest 5.x).

transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: in every output class
(`BaseModelOutputWithPast.cache`) and in every model's forward (the old keyword is deprecated, its removal
announced for 5.40), and `generate` passes it as `cache=`. 5.17–5.23 say `past_key_values` everywhere.
SigPhi's output classes need nothing from here: they subclass transformers' own, which carry whichever field the
installed release has. The forwards take `cache=` (and the old name, `take_cache`) and hand it on under the
installed release's name (`CACHE_NAME`), so our own calls raise no deprecation warning on any release.

transformers 5.24 also renamed gradient checkpointing to activation checkpointing (`activation_checkpointing_*`,
`is_activation_checkpointing`; the old names warn, their removal announced for v6) and 5.15–5.23 know only the old
names: `enable_activation_checkpointing`, `disable_activation_checkpointing` and `is_activation_checkpointing` ask
for whichever the model has, and `activation_checkpointing_argument()` names the trainer argument (on 5.24 TRL's
configs, which default the old name to True, warn unless the new one is set).

Dual encoders' `get_text_features` / `get_image_features` return a tensor on some releases and an output object on
others: `pooled_features` takes either.

Copied into saved model folders (the modeling files import it relatively): standard library and transformers only.
"""

import warnings

import torch

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def activation_checkpointing_argument() -> str:
    """The `TrainingArguments` field that switches activation checkpointing (training code only; imports the trainer
    lazily so model folders load without it)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def take_cache(cache, kwargs: dict):
    """The KV cache a forward was given, as `cache` or under the old name `past_key_values` (removed from `kwargs`).

    On releases that renamed it (5.24+), the old name still works and warns as transformers' own models do; on
    older ones it is the name `generate` itself uses, so it is taken silently.
    """
    past_key_values = kwargs.pop("past_key_values", None)
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
    if CACHE_NAME == "cache":
        warnings.warn("`past_key_values` is deprecated: this transformers release calls it `cache`, pass `cache=` "
                      "instead.", FutureWarning, stacklevel=3)
    return past_key_values


def output_cache(outputs):
    """The KV cache held by a transformers model output (`outputs.cache` from 5.24, `.past_key_values` before)."""
    return getattr(outputs, CACHE_NAME, None)


def is_activation_checkpointing(model) -> bool:
    """Whether `model` recomputes activations in its backward pass (5.24's name, or the older one before it)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def disable_activation_checkpointing(model) -> None:
    """Turn activation (gradient) checkpointing off, by the installed release's name for it."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def enable_activation_checkpointing(model, checkpointing_kwargs: dict | None = None) -> None:
    """Turn activation (gradient) checkpointing on with `checkpointing_kwargs` (e.g. `{"use_reentrant": False}`)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)


def pooled_features(output):
    """A dual encoder's `get_text_features` / `get_image_features` result as a tensor: some releases return the
    tensor itself, others a `BaseModelOutputWithPooling` holding it as `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
