"""A decode batch's inputs held on the device, and greedy decode steps run back to back on it.

`DecodeInputs` is one [8, size] int64 tensor: rows token, position, kv slot, kv position, decode slot,
decode length, state slot (the `ForwardBatch` of a decode-only step, as views), and a last row that is
1 for a live row and 0 for a padding row. `greedy_steps` runs k decode steps of the same rows: each
step's argmax becomes the next step's input token and the live rows' positions advance by one, all on
the device, so k steps cost one host round trip (and, captured in a CUDA graph, one launch). A padding
row stays at its scratch position.

Greedy tokens come out exactly as k single steps would pick them: the same forward pass, and the
argmax the sampler takes (`torch.argmax`, first index on ties).
"""

from __future__ import annotations

import torch

from .batch import ForwardBatch
from .runner import ModelRunner

# rows: token, position, kv slot, kv position, decode slot, decode length, state slot, live
ROWS = 8
_ADVANCED = slice(1, 6, 2)  # position, kv position, decode length


def decode_row(slot: int, position: int, token: int) -> list[int]:
    """One sequence's column of `DecodeInputs` (live)."""
    return [token, position, slot, position, slot, position + 1, slot, 1]


class DecodeInputs:
    """Static inputs of a decode batch of `size` rows on `device`."""

    def __init__(self, size: int, device: torch.device, pad: list[int] | None = None):
        """pad: the column of a padding row (7 values; needed when fewer than `size` rows are filled)."""
        self.size = size
        self.pad = None if pad is None else list(pad) + [0]
        self.tensor = torch.zeros(ROWS, size, dtype=torch.int64, device=device)

    def fill(self, rows: list[tuple[int, int, int]]) -> None:
        """rows: (slot, position, token) per sequence, then padding up to `size` (one host copy)."""
        if len(rows) > self.size or (len(rows) < self.size and self.pad is None):
            raise ValueError(f"{len(rows)} rows for decode inputs of size {self.size}"
                             + ("" if self.pad is not None else " without a padding row"))
        data = [decode_row(*r) for r in rows] + [self.pad] * (self.size - len(rows))
        self.tensor.copy_(torch.tensor(data, dtype=torch.int64).t())

    def batch(self, max_len: int) -> ForwardBatch:
        """The decode-only `ForwardBatch` viewing these inputs; max_len bounds every decode length."""
        x = self.tensor
        return ForwardBatch(input_ids=x[0], positions=x[1], kv_slots=x[2], kv_pos=x[3], segments=[],
                            prefill_state_slots=None, cu_seqlens=None, dec_slots=x[4], dec_lengths=x[5],
                            dec_state_slots=x[6], logit_rows=None, num_prefill_tokens=0,
                            num_decode=self.size, max_len=max_len)

    def advance_(self, tokens: torch.Tensor) -> None:
        """tokens [size]: the next step's input tokens; the live rows move one position on."""
        x = self.tensor
        x[0].copy_(tokens)
        x[_ADVANCED] += x[ROWS - 1]


@torch.inference_mode()
def greedy_steps(runner: ModelRunner, inputs: DecodeInputs, steps: int, max_len: int) -> torch.Tensor:
    """Run `steps` greedy decode steps from `inputs` (advanced in place); returns tokens [steps, size] on
    the device. No host synchronisation: graph-safe. max_len bounds the decode lengths of every step."""
    batch = inputs.batch(max_len)
    tokens = torch.empty(steps, inputs.size, dtype=torch.int64, device=inputs.tensor.device)
    for j in range(steps):
        torch.argmax(runner.forward(batch), dim=-1, out=tokens[j])
        if j + 1 < steps:
            inputs.advance_(tokens[j])
    return tokens
