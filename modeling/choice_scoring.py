"""Scoring answer choices with a generator: `log p(choice | question, image, document)` for every choice after every
document's prompt, and the RAG-Sequence marginal over the documents. Mixed into `RetrieverGeneratorForMultipleChoice`
(it needs `self.generator` and `self.config.length_normalize`).

Scoring cost: each question+document prompt is encoded once (images included) with the KV cache kept; every
choice's tokens then run on a copy of that cache, and the vocabulary projection is computed only at the answer
positions (`logits_to_keep=1` on the prompt, then the choice tokens). The per-pair layout (one whole sequence per
document x choice, logits everywhere, `choice_log_likelihoods`) is the reference the cached path is checked against.
"""

import torch
from torch import nn

from processing.processing_sigphi import IGNORE_INDEX

from .transformers_compat import CACHE_NAME, output_cache

# Generator inputs that hold one entry per prompt token (they follow the prompt into the choice tokens).
PER_TOKEN_INPUTS = ("cross_attention_mask",)


def token_log_probs(logits: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
    """log p(target) at each position: (..., vocab) logits and (...) targets -> (...) in float32."""
    return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def marginalize(doc_choice_scores: torch.Tensor, doc_scores: torch.Tensor | None,
                doc_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RAG-Sequence marginal: (batch, n_docs, num_choices) `log p(choice | q, d_k)` and (batch, n_docs)
    `doc_scores` (None: every document alike) -> ((batch, num_choices) `log sum_k p(d_k | q) p(choice | q, d_k)`,
    (batch, n_docs) document posterior `p(d_k | q) = softmax(doc_scores / tau)`)."""
    if doc_scores is None:
        doc_scores = doc_choice_scores.new_zeros(doc_choice_scores.shape[:2])
    doc_log_posterior = (doc_scores.float() / doc_temperature).log_softmax(-1)
    logits = torch.logsumexp(doc_choice_scores + doc_log_posterior[..., None].to(doc_choice_scores.device), dim=1)
    return logits, doc_log_posterior.exp()


class ChoiceScoringMixin:
    """The generator's log-likelihood of answer choices, per document."""

    def choice_log_likelihoods(self, choice_labels: torch.LongTensor, length_normalize: bool | None = None,
                               **generator_inputs) -> torch.Tensor:
        """Per-pair layout: log-likelihood of each sequence's answer tokens, one whole sequence per row ((n, seq)
        `choice_labels`, -100 outside the answer, with the generator's inputs for those n sequences) -> (n,)."""
        length_normalize = self.config.length_normalize if length_normalize is None else length_normalize
        logits = self.generator(**generator_inputs).logits  # (n, seq, vocab)
        targets = choice_labels[:, 1:]  # the token each position predicts
        scored = targets != IGNORE_INDEX
        per_token = token_log_probs(logits[:, :-1][scored], targets[scored])
        rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(targets)[scored]
        total = torch.zeros(len(targets), device=per_token.device).index_add(0, rows, per_token)
        return total / scored.sum(-1).clamp(min=1).to(total.device) if length_normalize else total

    def _plain_output_head(self) -> nn.Module | None:
        """The generator's LM head when its logits are nothing but `lm_head(hidden_states)` of its base model's
        `last_hidden_state` (SigPhi, Mllama, Llava-style models), so it can be applied to chosen positions only;
        None for generators that change logits after the head (soft-capping, scaling) or are laid out otherwise."""
        head = self.generator.get_output_embeddings()
        text_config = self.generator.config.get_text_config()
        if (head is None or self.generator.base_model is self.generator
                or getattr(text_config, "final_logit_softcapping", None) is not None
                or getattr(text_config, "logit_scale", None) is not None):
            return None
        return head

    def score_choices(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, choice_ids: torch.LongTensor,
                      choice_attention_mask: torch.Tensor, n_docs: int, length_normalize: bool | None = None,
                      **prompt_inputs) -> torch.Tensor:
        """`log p(choice | question, image, document_k)` of every choice after every document's prompt.

        Inputs as `RetrieverGeneratorProcessor.marginal_inputs` makes them: `batch * n_docs` left-padded prompts
        and `batch * num_choices` right-padded choice token rows. Each prompt is encoded once with its KV cache;
        the cache is repeated for the question's choices, which then run their own tokens only. Logits are
        computed at answer positions only. Returns (batch, n_docs, num_choices).
        """
        length_normalize = self.config.length_normalize if length_normalize is None else length_normalize
        n_rows = input_ids.shape[0]
        batch = n_rows // n_docs
        num_choices = choice_ids.shape[0] // batch
        choice_ids = choice_ids.to(input_ids.device)
        choice_attention_mask = choice_attention_mask.to(input_ids.device)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.generator(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=True, logits_to_keep=1, **prompt_inputs)
        # First answer token: predicted from the prompt's last position, for every choice of the question.
        first_targets = choice_ids[:, 0].view(batch, 1, num_choices).expand(batch, n_docs, num_choices)
        first_log_probs = outputs.logits[:, -1].float().log_softmax(-1).view(batch, n_docs, -1)
        scores = first_log_probs.gather(-1, first_targets)
        length = choice_ids.shape[1]
        if length > 1:  # the choices' other tokens, on copies of each prompt's cache
            cache = output_cache(outputs)
            if cache is None:
                raise ValueError("The generator returned no KV cache for the prompts (activation checkpointing in "
                                 "training mode turns it off): turn it off (generator.activation_checkpointing_"
                                 "disable(), gradient_checkpointing_disable() before transformers 5.24), or score "
                                 "with scoring='pairs'.")
            cache.batch_repeat_interleave(num_choices)
            rows = choice_ids.view(batch, 1, num_choices, length).expand(batch, n_docs, num_choices, length)
            rows = rows.reshape(n_rows * num_choices, length)
            row_mask = choice_attention_mask.view(batch, 1, num_choices, length).expand(
                batch, n_docs, num_choices, length).reshape(n_rows * num_choices, length)
            prompt_mask = attention_mask.repeat_interleave(num_choices, dim=0)
            positions = (prompt_mask.sum(-1, keepdim=True) + torch.arange(length - 1, device=rows.device))
            extra = {name: prompt_inputs[name][:, -1:].repeat_interleave(num_choices, dim=0).expand(
                -1, length - 1, *prompt_inputs[name].shape[2:])
                for name in PER_TOKEN_INPUTS if prompt_inputs.get(name) is not None}
            choice_inputs = {"input_ids": rows[:, :-1], "position_ids": positions.long(), "use_cache": True,
                             "attention_mask": torch.cat([prompt_mask, row_mask[:, :-1]], dim=-1),
                             CACHE_NAME: cache, **extra}
            targets, valid = rows[:, 1:], row_mask[:, 1:].bool()
            rest = torch.zeros(targets.shape, device=targets.device)
            head = self._plain_output_head()
            if head is not None:  # hidden states, then the vocabulary projection at real answer tokens only
                hidden = self.generator.base_model(**choice_inputs).last_hidden_state
                rest[valid] = token_log_probs(head(hidden[valid]), targets[valid])
            else:
                rest[valid] = token_log_probs(self.generator(**choice_inputs).logits[valid], targets[valid])
            scores = scores + rest.sum(-1).view(batch, n_docs, num_choices)
        if length_normalize:
            scores = scores / choice_attention_mask.sum(-1).view(batch, 1, num_choices)
        return scores
