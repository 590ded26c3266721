"""DeQA-Score's training losses and its score read-out, as pure tensor functions (spec §4–5).

- :func:`level_probs`, :func:`score_from_probs`: closed-set level probabilities (softmax over the
  five level-token logits), the score ``μ = Σ k·p_k`` and the predicted std
  ``σ = sqrt(Σ p_k (k − μ)²)``.
- :func:`answer_ce`: next-token cross-entropy on the answer tokens (the caller's labels decide
  which; the level token is left out for DeQA and kept for Q-Align).
- :func:`level_kl`: KL between the soft label and the **full-vocabulary** softmax at the level
  position (the label puts zero mass on every other token). With a one-hot label it equals the
  cross-entropy of the level token, which is how Q-Align keeps the level token "in CE".
- :func:`fidelity_loss`: the UNIQUE fidelity loss on pairs, with the authors' unit std or the
  paper's predicted std.
- :func:`deqa_loss`: the total ``w_fid·L_fid + w_tok·Σ_{A,B}(CE + w_kl·KL)`` for a batch laid out as
  ``[A_1..A_B, B_1..B_B]`` (both images of every pair in one forward pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LEVEL_VALUES = torch.arange(1, 6, dtype=torch.float64)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits up to float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def level_probs(logits: torch.Tensor, level_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Softmax over the five level-token logits: ``(N, V) -> (N, 5)``, bad..excellent."""
    return torch.softmax(_up(logits[:, torch.as_tensor(level_ids, device=logits.device)]), dim=-1)


def score_from_probs(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``μ = Σ k·p_k`` on 1..5 and predicted std ``σ = sqrt(Σ p_k (k − μ)²)``."""
    k = _LEVEL_VALUES.to(probs.device, probs.dtype)
    mu = probs @ k
    var = (probs * (k[None, :] - mu[:, None]) ** 2).sum(-1)
    return mu, var.clamp_min(0).sqrt()


def read_scores(
    logits: torch.Tensor, level_pos: torch.Tensor, level_ids: list[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Level probabilities (float64), score and predicted std read at each row's level position.

    ``logits`` is ``(N, L, V)``, ``level_pos`` ``(N,)``; returns ``(probs (N, 5), mu (N,), sigma (N,))``.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    probs = level_probs(logits[rows, level_pos.to(logits.device)], level_ids).double()
    mu, sigma = score_from_probs(probs)
    return probs, mu, sigma


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample mean next-token CE over positions whose label is not ``-100``: ``(N,)``."""
    shift_logits = _up(logits[:, :-1])
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    count = (shift_labels != -100).sum(-1).clamp_min(1)
    return loss.sum(-1) / count


def level_kl(logits_at_level: torch.Tensor, level_ids: list[int] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(t ‖ softmax(logits))`` with ``t`` the soft label on the level ids: ``(N,)``.

    Levels with zero target mass contribute nothing (``0·log 0 = 0``).
    """
    logq = torch.log_softmax(_up(logits_at_level), dim=-1)[:, torch.as_tensor(level_ids, device=logits_at_level.device)]
    t = target.to(logq.dtype)
    logt = torch.where(t > 0, t.clamp_min(1e-30).log(), torch.zeros_like(t))
    return (t * (logt - logq)).sum(-1)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def fidelity_loss(
    mu_a: torch.Tensor,
    mu_b: torch.Tensor,
    m_a: torch.Tensor,
    m_b: torch.Tensor,
    s_a: torch.Tensor | None = None,
    s_b: torch.Tensor | None = None,
    sigma_a: torch.Tensor | None = None,
    sigma_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-mean fidelity loss between predicted and ground-truth pair preferences.

    Ground truth ``P = Φ((m_A − m_B)/sqrt(s_A² + s_B²))``, or ``1[m_A > m_B]`` without std (or when
    both stds are 0). Prediction ``P̂ = Φ((μ_A − μ_B)/sqrt(2))`` (the authors' unit std), or with
    ``sigma_a``/``sigma_b`` given, ``Φ((μ_A − μ_B)/sqrt(σ_A² + σ_B²))`` (the paper).
    ``L = 1 − sqrt(P·P̂ + 1e-8) − sqrt((1 − P)(1 − P̂) + 1e-8)``.
    """
    m_a, m_b = m_a.to(mu_a.dtype), m_b.to(mu_a.dtype)
    if s_a is None or s_b is None:
        p = (m_a > m_b).to(mu_a.dtype)
    else:
        var = s_a.to(mu_a.dtype) ** 2 + s_b.to(mu_a.dtype) ** 2
        p = torch.where(var > 0, _phi((m_a - m_b) / var.clamp_min(1e-12).sqrt()), (m_a > m_b).to(mu_a.dtype))
    if sigma_a is None or sigma_b is None:
        p_hat = _phi((mu_a - mu_b) / math.sqrt(2))
    else:
        p_hat = _phi((mu_a - mu_b) / (sigma_a**2 + sigma_b**2).clamp_min(1e-12).sqrt())
    loss = 1 - torch.sqrt(p * p_hat + 1e-8) - torch.sqrt((1 - p) * (1 - p_hat) + 1e-8)
    return loss.mean()


def deqa_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    level_pos: torch.Tensor,
    level_ids: list[int],
    target: torch.Tensor,
    m: torch.Tensor,
    s: torch.Tensor | None,
    kl_weight: float = 1.0,
    token_weight: float = 0.05,
    fidelity_weight: float = 1.0,
    fidelity_sigma: str = "fixed",
) -> dict[str, torch.Tensor]:
    """The DeQA total loss for a batch ``[A_1..A_B, B_1..B_B]`` of ``2B`` sequences.

    Returns a dict with ``loss`` (to backpropagate) and the detached components ``ce``, ``kl``,
    ``fidelity`` (each the sum over the A and B halves, as in the authors' code) for logging.
    """
    n = logits.shape[0]
    if n % 2:
        raise ValueError(f"a DeQA batch holds pairs, so its size must be even (got {n})")
    rows = torch.arange(n, device=logits.device)
    at_level = logits[rows, level_pos]
    ce = answer_ce(logits, labels)
    kl = level_kl(at_level, level_ids, target)
    half = n // 2
    ce_sum = ce[:half].mean() + ce[half:].mean()
    kl_sum = kl[:half].mean() + kl[half:].mean()
    mu, sigma = score_from_probs(level_probs(at_level, level_ids))
    if fidelity_sigma not in ("fixed", "predicted"):
        raise ValueError(f"fidelity_sigma must be 'fixed' or 'predicted', got {fidelity_sigma!r}")
    sig_a, sig_b = (sigma[:half], sigma[half:]) if fidelity_sigma == "predicted" else (None, None)
    s_a, s_b = (s[:half], s[half:]) if s is not None else (None, None)
    fid = fidelity_loss(mu[:half], mu[half:], m[:half], m[half:], s_a, s_b, sig_a, sig_b)
    total = token_weight * (ce_sum + kl_weight * kl_sum)
    if fidelity_weight:
        total = total + fidelity_weight * fid
    return {"loss": total, "ce": ce_sum.detach(), "kl": kl_sum.detach(), "fidelity": fid.detach()}
