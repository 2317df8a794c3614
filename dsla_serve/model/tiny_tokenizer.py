"""A byte-level Hugging Face tokenizer that needs no download, for the tiny built-in models.

Ids 0-255 are the bytes of UTF-8 text; 256/257/258 are <pad>/<s>/</s>. It is a real
`PreTrainedTokenizerFast` (so `encode`, `decode`, `apply_chat_template` and `save_pretrained` work
like any other), with a plain chat template.
"""

from __future__ import annotations

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_byte_tokenizer():
    """-> transformers.PreTrainedTokenizerFast with VOCAB_SIZE ids (bytes, then pad/bos/eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # ByteLevel stands a printable character in for each byte (the GPT-2 mapping); rebuild that
    # mapping so the vocabulary can be ordered by byte value (id == byte).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    vocab = {mapping[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, BOS, EOS])  # ids 256, 257, 258 in this order
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast
