"""DeQA losses and score read-out against hand-computed values (spec §4-5)."""

import math

import pytest
import torch

from deqa.losses import answer_ce, deqa_loss, fidelity_loss, level_kl, level_probs, score_from_probs

LEVEL_IDS = [2, 3, 4, 5, 6]


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_score_and_std_from_probs():
    mu, sigma = score_from_probs(torch.tensor([[0, 0, 0.5, 0.5, 0], [0.2] * 5, [1, 0, 0, 0, 0]], dtype=torch.float64))
    assert mu.tolist() == pytest.approx([3.5, 3.0, 1.0])
    assert sigma.tolist() == pytest.approx([0.5, math.sqrt(2), 0.0])


def test_level_probs_is_closed_set_softmax():
    logits = torch.zeros(1, 7)
    logits[0, 0] = 50.0  # a non-level token dominates the open set but not the closed set
    logits[0, 6] = math.log(3.0)
    p = level_probs(logits, LEVEL_IDS)
    assert p[0].tolist() == pytest.approx([1 / 7, 1 / 7, 1 / 7, 1 / 7, 3 / 7])


def test_level_kl_uses_full_vocabulary():
    # uniform over 7 tokens: q = 1/7; t = (0, 0, .5, .5, 0): KL = 2 * .5 * log(.5 * 7) = log 3.5
    kl = level_kl(torch.zeros(1, 7), LEVEL_IDS, torch.tensor([[0, 0, 0.5, 0.5, 0]]))
    assert kl.item() == pytest.approx(math.log(3.5), abs=1e-6)


def test_level_kl_with_onehot_equals_level_token_ce():
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(3, 5)
    target[torch.arange(3), torch.tensor([0, 2, 4])] = 1
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 4, 6]), reduction="none")
    assert torch.allclose(level_kl(logits, LEVEL_IDS, target), ce, atol=1e-6)


def test_answer_ce_ignores_masked_tokens():
    logits = torch.zeros(1, 4, 10)
    labels = torch.tensor([[-100, 3, -100, 5]])  # predicted from positions 0 and 2
    assert answer_ce(logits, labels).item() == pytest.approx(math.log(10), abs=1e-6)


def test_fidelity_authors_unit_sigma():
    # P = Phi(1/sqrt(.5)) = .92135, P^ = Phi(.5/sqrt 2) = .63816
    loss = fidelity_loss(t(3.5), t(3.0), t(3.0), t(2.0), t(0.5), t(0.5))
    assert loss.item() == pytest.approx(0.06451075463884165, abs=1e-9)


def test_fidelity_paper_predicted_sigma():
    loss = fidelity_loss(t(3.5), t(3.0), t(3.0), t(2.0), t(0.5), t(0.5), t(0.3), t(0.4))
    assert loss.item() == pytest.approx(0.00785493336585684, abs=1e-9)


def test_fidelity_without_std_uses_indicator():
    loss = fidelity_loss(t(3.5), t(3.0), t(3.0), t(2.0))
    assert loss.item() == pytest.approx(0.2010488216919759, abs=1e-9)
    nan = fidelity_loss(t(3.5), t(3.0), t(3.0), t(2.0), t(float("nan")), t(float("nan")))
    assert nan.item() == pytest.approx(0.2010488216919759, abs=1e-9)


def test_total_loss_weights_and_pair_sum():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 7, dtype=torch.float64)
    labels = torch.full((4, 6), -100)
    labels[:, 3:] = 1
    pos = torch.tensor([2, 2, 2, 2])
    target = torch.tensor([[0, 0, 0.3, 0.7, 0]] * 4, dtype=torch.float64)
    m, s = t(4.0, 2.0, 3.0, 3.0), t(0.5, 0.5, 0.5, 0.5)
    out = deqa_loss(logits, labels, pos, LEVEL_IDS, target, m, s, kl_weight=2.0, token_weight=0.1, fidelity_weight=3.0)
    ce = answer_ce(logits, labels)
    kl = level_kl(logits[:, 2], LEVEL_IDS, target)
    mu, _ = score_from_probs(level_probs(logits[:, 2], LEVEL_IDS).double())
    fid = fidelity_loss(mu[:2], mu[2:], m[:2], m[2:], s[:2], s[2:])
    expected = 3.0 * fid + 0.1 * ((ce[:2].mean() + ce[2:].mean()) + 2.0 * (kl[:2].mean() + kl[2:].mean()))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-9)
    with pytest.raises(ValueError, match="even"):
        deqa_loss(logits[:3], labels[:3], pos[:3], LEVEL_IDS, target[:3], m[:3], s[:3])


def test_read_scores_reads_each_rows_level_position():
    from deqa.losses import read_scores

    logits = torch.zeros(2, 4, 7)
    logits[0, 1, 6] = math.log(3.0)  # row 0 at position 1: excellent 3x as likely
    logits[1, 3, 2] = 50.0  # row 1 at position 3: all mass on bad
    probs, mu, sigma = read_scores(logits, torch.tensor([1, 3]), LEVEL_IDS)
    assert probs.dtype == torch.float64
    assert probs[0].tolist() == pytest.approx([1 / 7, 1 / 7, 1 / 7, 1 / 7, 3 / 7])
    assert mu.tolist() == pytest.approx([(1 + 2 + 3 + 4 + 15) / 7, 1.0], abs=1e-6)  # float32 logits
    assert sigma[1].item() == pytest.approx(0.0, abs=1e-6)
