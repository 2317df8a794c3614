"""Multi-query associative recall (MQAR) as text: key-value pairs, then every key asked for again.

    "Remember these codes: apple 417, river 903, ... , lamp 255.\nRecall: river 903, lamp 255, ..."

Keys are distinct common words, values 3-digit numbers; the queries are the keys in a shuffled order,
and each value after a queried key is an answer span. A model recalls a pair when it predicts every
token of the value (greedy, given the episode so far).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEY_WORDS = tuple("""
apple river stone cloud bread horse candle garden mirror window forest silver bottle island lamp
ladder pepper rocket saddle tiger violin wagon anchor basket castle desert engine feather glove
hammer jacket kettle lemon magnet needle orange pencil quilt ribbon shovel tunnel umbrella valley
walnut yacht zebra arrow barrel button cabin carpet cherry collar copper cotton dragon eagle
falcon fence finger flower garlic ginger goat harbor helmet honey jewel jungle kitten ladle leather
lizard marble meadow monkey mustard napkin nickel oyster paddle palace parrot peach pillow pirate
planet pocket pond puppet rabbit radish raven saucer scarf shadow sheep shell slipper spider spoon
statue sugar sword teapot thread thunder timber tomato towel tulip turtle velvet village wallet
whistle willow wizard wool anvil badge beetle blanket bridge broom bucket cactus camel canvas
cedar chimney clover comet coral crystal dagger dolphin elbow ember fiddle flute fossil galaxy
glacier goblet granite gravel hazel hinge iron ivory jasmine kayak kernel kite lantern lava lichen
locket lotus maple mitten moss nectar oak olive orchid otter pebble pelican pine plum prism
quartz quill reed robin rope rust salmon sapphire satin spruce squid tablet thistle thorn tin
topaz trumpet twig walrus wheat wren""".split())

PREFIX = "Remember these codes:"
PAIR = " {key} {value}"
SEPARATOR = ","
RECALL = ".\nRecall:"


@dataclass(frozen=True)
class RecallEpisode:
    """One MQAR episode; `answer_spans[i]` = (start, length) of the i-th query's value tokens."""

    input_ids: np.ndarray  # [T] int64, ends with the last answer
    keys: tuple[str, ...]  # in query order
    values: tuple[str, ...]
    answer_spans: tuple[tuple[int, int], ...]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def build_recall_episode(tokenizer, num_pairs: int, rng: np.random.Generator) -> RecallEpisode:
    """An episode with `num_pairs` distinct keys, each queried once in a shuffled order."""
    if not 1 <= num_pairs <= len(KEY_WORDS):
        raise ValueError(f"num_pairs must be in [1, {len(KEY_WORDS)}] (the key vocabulary), got {num_pairs}")
    keys = [KEY_WORDS[i] for i in rng.choice(len(KEY_WORDS), size=num_pairs, replace=False)]
    values = [str(int(v)) for v in rng.integers(100, 1000, size=num_pairs)]
    ids = _ids(tokenizer, PREFIX)
    for i, (k, v) in enumerate(zip(keys, values)):
        if i:
            ids += _ids(tokenizer, SEPARATOR)
        ids += _ids(tokenizer, PAIR.format(key=k, value=v))
    ids += _ids(tokenizer, RECALL)
    order = rng.permutation(num_pairs)
    spans = []
    for j, i in enumerate(order):
        if j:
            ids += _ids(tokenizer, SEPARATOR)
        ids += _ids(tokenizer, f" {keys[i]}")
        value = _ids(tokenizer, f" {values[i]}")
        spans.append((len(ids), len(value)))
        ids += value
    return RecallEpisode(np.asarray(ids, dtype=np.int64), tuple(keys[i] for i in order),
                         tuple(values[i] for i in order), tuple(spans))


def recall_episodes(tokenizer, num_pairs: int, count: int, seed: int) -> list[RecallEpisode]:
    """`count` evaluation episodes; the same (seed, num_pairs) give the same ones."""
    rng = np.random.default_rng([seed, num_pairs, 7])
    return [build_recall_episode(tokenizer, num_pairs, rng) for _ in range(count)]
