"""Every conversion-order method, and the order's record in the manifest."""

import math

import pytest
import torch

from dsla_serve.model import Artifact, conversion_order, decoder_layers
from dsla_serve.trainer import Trainer
from dsla_serve.trainer.data import build_dataset
from dsla_serve.trainer.distributed import init_distributed
from dsla_serve.trainer.seeds import layer_seed
from dsla_serve.trainer.sensitivity import attention_entropy, attention_local_mass, compute_order

from .helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def setup(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("order") / "artifact"
    model, tokenizer = tiny_model()
    cfg = tiny_config(corpus, out)
    return model, cfg, build_dataset(cfg.data, tokenizer, cfg.seed), init_distributed("cpu")


def _order(setup, **order):
    model, cfg, data, dist = setup
    cfg = cfg.with_overrides(order=order)
    return compute_order(model, cfg, data.train, data.val, dist)


def test_fixed_orders(setup):
    assert _order(setup, method="forward").order == [0, 1, 2]
    assert _order(setup, method="reverse").order == [2, 1, 0]
    assert _order(setup, method="list", layers=[2, 0]).order == [2, 0]
    with pytest.raises(ValueError, match=r"indices \[5\] are outside the model's 3 layers"):
        _order(setup, method="list", layers=[5, 0])


def test_entropy_ranks_a_uniform_attention_layer_first():
    model, _ = tiny_model()
    with torch.no_grad():  # zero queries: every score equal, each row uniform over its causal prefix
        decoder_layers(model)[1].self_attn.q_proj.weight.zero_()
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    scores = attention_entropy(model, ids, batch_size=2, dist=init_distributed("cpu"))
    uniform = sum(math.log(t + 1) for t in range(20)) / 20  # mean entropy of uniform rows over 1..20 keys
    assert scores[1] == pytest.approx(uniform, rel=1e-5)
    assert all(scores[i] < scores[1] for i in (0, 2))
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass


def test_local_mass_is_the_share_of_each_row_on_its_last_keys():
    model, _ = tiny_model()
    with torch.no_grad():  # uniform rows in layer 1: row t puts min(window, t + 1) / (t + 1) on its window
        decoder_layers(model)[1].self_attn.q_proj.weight.zero_()
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    dist = init_distributed("cpu")
    mass = attention_local_mass(model, ids, 4, batch_size=2, dist=dist)
    assert mass[1] == pytest.approx(sum(min(4, t + 1) / (t + 1) for t in range(20)) / 20, rel=1e-5)
    assert all(0 < m <= 1 for m in mass.values())
    whole = attention_local_mass(model, ids, 20, batch_size=3, dist=dist)  # the window spans every row
    assert all(m == pytest.approx(1.0, rel=1e-5) for m in whole.values())
    diagonal = attention_local_mass(model, ids, 1, batch_size=2, dist=dist)[1]  # each row's own key only
    assert diagonal == pytest.approx(sum(1 / (t + 1) for t in range(20)) / 20, rel=1e-5)


def test_attention_statistics_of_the_reference_model():
    """On SmolLM2-135M-Instruct (eager attention through its Hugging Face layers): a window that spans
    the rows holds all of each row, a 4-key window part of it, and entropies lie within log(T)."""
    from ..reference import TRAIN_TEXT, load_reference

    model, tokenizer = load_reference()
    ids = torch.tensor([tokenizer(TRAIN_TEXT.read_text()[:2000])["input_ids"][:48]])
    dist = init_distributed("cpu")
    whole = attention_local_mass(model, ids, 48, batch_size=1, dist=dist)
    assert len(whole) == 30 and all(m == pytest.approx(1.0, abs=1e-5) for m in whole.values())
    local = attention_local_mass(model, ids, 4, batch_size=1, dist=dist)
    assert all(0 < m < 1 for m in local.values()) and len(set(round(m, 4) for m in local.values())) > 1
    entropy = attention_entropy(model, ids, batch_size=1, dist=dist)
    assert all(0 <= e <= math.log(48) for e in entropy.values())
    assert model.config._attn_implementation != "eager"  # restored


def test_entropy_order_follows_the_scores(setup):
    result = _order(setup, method="entropy", calibration_sequences=4)
    assert sorted(result.scores) == [0, 1, 2]
    assert result.order == sorted(result.scores, key=lambda i: -result.scores[i])
    assert all(0 < s <= math.log(32) for s in result.scores.values())


def test_loss_delta_probes_each_layer_on_a_copy(setup):
    model, cfg, data, dist = setup
    before = [p.clone() for p in model.parameters()]
    result = _order(setup, method="loss_delta", probe_steps=2, calibration_sequences=4)
    assert sorted(result.scores) == [0, 1, 2] and all(s > 0 for s in result.scores.values())
    assert result.order == sorted(result.scores, key=lambda i: result.scores[i])
    assert conversion_order(model) == [] and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    again = _order(setup, method="loss_delta", probe_steps=2, calibration_sequences=4)
    assert again.scores == result.scores  # seeded per layer: repeatable


def test_order_method_and_scores_are_saved_in_the_manifest(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "a", depth=1, order={"method": "entropy", "calibration_sequences": 4},
                      training={"steps": 2})
    model, tokenizer = tiny_model()
    summary = Trainer(cfg, model=model, tokenizer=tokenizer).run()
    meta = Artifact.open(summary.artifact).metadata["order"]
    assert meta["method"] == "entropy" and meta["order"] == summary.order
    assert set(meta["scores"]) == {"0", "1", "2"}
    assert str(summary.order[0]) == max(meta["scores"], key=meta["scores"].get)


def test_layer_seeds_depend_on_base_seed_layer_and_purpose_only():
    assert layer_seed(0, 3) == layer_seed(0, 3)
    assert len({layer_seed(0, 3), layer_seed(1, 3), layer_seed(0, 4), layer_seed(0, 3, "probe")}) == 4


@pytest.fixture(scope="module")
def episode_setup(corpus, tmp_path_factory):
    """The tiny model on rows long enough for byte-level episodes (a passkey needs 103 tokens)."""
    from dsla_serve.trainer.episodes import TrainingEpisodes

    model, tokenizer = tiny_model()
    cfg = tiny_config(corpus, tmp_path_factory.mktemp("retrieval") / "artifact",
                      data={"seq_len": 160, "max_val_tokens": 160 * 4,
                            "episodes": {"passkey_fraction": 0.5, "recall_fraction": 0.3}},
                      order={"method": "retrieval_delta", "probe_steps": 2, "calibration_sequences": 4,
                             "episode_sequences": 4})
    data = build_dataset(cfg.data, tokenizer, cfg.seed)
    episodes = TrainingEpisodes.build(cfg.data.episodes, tokenizer, data, cfg.data.seq_len, seed=cfg.seed,
                                      held_out_rows=cfg.order.episode_sequences, batch_size=4)
    return model, cfg, data, init_distributed("cpu"), episodes


def test_retrieval_delta_adds_each_probes_answer_kl_on_held_out_episodes(episode_setup):
    model, cfg, data, dist, episodes = episode_setup
    assert episodes.held_out and not episodes.plan.notes[1:]
    before = [p.clone() for p in model.parameters()]
    result = compute_order(model, cfg, data.train, data.val, dist, episodes=episodes)
    assert result.method == "retrieval_delta" and sorted(result.order) == [0, 1, 2]  # a permutation
    assert result.order == sorted(result.scores, key=lambda i: (result.scores[i], i))
    assert conversion_order(model) == [] and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    plain = compute_order(model, cfg.with_overrides(order={**cfg.order.model_dump(), "method": "loss_delta"}),
                          data.train, data.val, dist, episodes=episodes)
    # the same seeded probes, each score raised by its (positive) answer-token KL
    assert all(result.scores[i] > plain.scores[i] > 0 for i in range(3))
    assert compute_order(model, cfg, data.train, data.val, dist, episodes=episodes).scores == result.scores


def test_retrieval_delta_without_episodes_that_fit_orders_by_loss_delta_and_says_so(setup, caplog):
    from dsla_serve.trainer.episodes import TrainingEpisodes

    model, cfg, data, dist = setup  # seq_len 32: no byte-level episode fits
    cfg = cfg.with_overrides(order={"method": "retrieval_delta", "probe_steps": 1, "calibration_sequences": 2})
    episodes = TrainingEpisodes.build(cfg.data.episodes, tiny_model()[1], data, 32, seed=0, held_out_rows=4,
                                      batch_size=4)
    assert not episodes.active
    with caplog.at_level("WARNING", logger="dsla_serve.trainer"):
        result = compute_order(model, cfg, data.train, data.val, dist, episodes=episodes)
    assert result.method == "loss_delta" and sorted(result.order) == [0, 1, 2]
    assert "ordering by loss_delta" in caplog.text and "passkey left out" in caplog.text
