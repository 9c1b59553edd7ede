"""The one place that knows how transformers releases differ (supported: 5.17 up to the newest 5.x).

transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: in every output class
(`BaseModelOutputWithPast.cache`) and in every model's forward (the old keyword is deprecated, its removal
announced for 5.40), and `generate` passes it as `cache=`. 5.17–5.23 say `past_key_values` everywhere.
SigPhi's output classes need nothing from here: they subclass transformers' own, which carry whichever field the
installed release has. The forwards take the cache under either name (`pop_cache`) and hand it on under the
installed release's name (`CACHE_NAME`), so no deprecation warning is raised on any release.

Copied into saved model folders (the modeling files import it relatively): standard library and transformers only.
"""

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def pop_cache(kwargs: dict):
    """Remove the KV cache from a forward's `kwargs`, whichever name the caller used (None when absent)."""
    cache, past_key_values = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


def output_cache(outputs):
    """The KV cache held by a transformers model output (`outputs.cache` from 5.24, `.past_key_values` before)."""
    return getattr(outputs, CACHE_NAME, None)
