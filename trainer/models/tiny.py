"""A tiny chat model for tests: Llama architecture, ChatML template, built offline in a second.

It exercises the chat-template path (trainer.render) the way SmolLM2-135M-Instruct does, with
no download: the demo policy's byte-level BPE tokenizer (trained on trainer/demo_corpus.txt)
plus ChatML's `<|im_start|>` and `<|im_end|>`, and SmolLM2's template (a default system message
when the conversation has none). EOS (`<|endoftext|>`) and the end-of-turn token (`<|im_end|>`)
differ on purpose, so that code which stops on EOS alone is caught. The weights are random: it
is for shapes, masks and token ids, not for text worth reading.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.models.demo import build_tokenizer, corpus_documents, vocabulary

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
DEFAULT_SYSTEM = "You are a tiny test assistant."
# SmolLM2-135M-Instruct's template, with its default system message replaced.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_chat_tokenizer(vocab: int = 400) -> PreTrainedTokenizerFast:
    tokenizer = build_tokenizer(corpus_documents(), vocab)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_chat_model(path: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a random tiny Llama chat model and its tokenizer into `path` (from_pretrained reads it)."""
    tokenizer = tiny_chat_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **vocabulary(tokenizer, bos_token_id=tokenizer.bos_token_id),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Like SmolLM2's generation_config: generate() stops at the end of the turn by itself.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, im_end]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
