"""Losses: NT-Xent across modalities (plain and hard-negative), Chamfer distance, masked patch MSE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair_logits(a: torch.Tensor, b: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of the 2B samples [a; b] against each other, self-pairs removed.

    Returns ``logits [2B, 2B]`` (diagonal set to -inf) and the index of each row's positive."""
    z = F.normalize(torch.cat([a, b], dim=0).float(), dim=-1)          # [2B, K]
    n = a.shape[0]
    logits = z @ z.T / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return logits, pos


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent between paired rows of a [B, K] and b [B, K] (row i of a and of b form the positive pair).

    Each anchor's negatives are all other samples of both sets in the batch; the loss is the mean of
    l(a_i, b_i) and l(b_i, a_i) over i, i.e. (1 / 2B) * sum_i [l(a_i, b_i) + l(b_i, a_i)].
    """
    logits, pos = _pair_logits(a, b, tau)
    return F.cross_entropy(logits, pos)


def soft_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float, neighbours: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """NT-Xent with soft targets that share ``alpha`` of each anchor's mass among its in-batch neighbours.

    Same logits as :func:`nt_xent` (rows and columns: [a; b], 2B samples, self-pairs removed).
    ``neighbours`` [B, B] bool marks pairs of shapes that are neighbours (symmetric, diagonal False).
    Anchor a_i's target: 1 - alpha on its pair b_i, and alpha / (2 |N(i)|) on both a_j and b_j of each
    neighbour j in N(i); an anchor with no neighbour in the batch keeps all its mass on its pair
    (alpha = 0, or no neighbours, gives back NT-Xent). The loss is the cross-entropy
    -sum_c t_c log softmax(logits)_c, averaged over the 2B anchors.
    """
    logits, pos = _pair_logits(a, b, tau)
    n = a.shape[0]
    nb = neighbours.to(device=logits.device, dtype=logits.dtype)                  # [B, B]
    count = nb.sum(dim=1, keepdim=True)                                         # [B, 1]
    share = torch.where(count > 0, alpha / (2 * count.clamp(min=1)), torch.zeros_like(count)) * nb
    self_w = 1 - torch.where(count > 0, torch.full_like(count, alpha), torch.zeros_like(count))
    half = torch.cat([share, share], dim=1)                                     # [B, 2B]: a_j and b_j
    target = torch.cat([half, half], dim=0)                                     # rows a_i, then b_i
    target[torch.arange(2 * n, device=logits.device), pos] += torch.cat([self_w, self_w]).squeeze(1)
    logp = torch.log_softmax(logits, dim=1)
    return -torch.where(target > 0, target * logp, torch.zeros_like(logp)).sum(dim=1).mean()


def hard_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float, beta: float = 1.0,
                 tau_plus: float = 0.05) -> torch.Tensor:
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021) on the same pairs as :func:`nt_xent`.

    Negatives are re-weighted by ``exp(beta * sim / tau)`` (normalised to mean 1) and the estimate is
    debiased with the class prior ``tau_plus``; beta = 0 and tau_plus = 0 give back NT-Xent.
    """
    logits, pos_idx = _pair_logits(a, b, tau)
    m = logits.shape[0]
    pos_logit = logits.gather(1, pos_idx[:, None]).squeeze(1)           # [2B]
    neg_mask = torch.ones_like(logits, dtype=torch.bool)
    neg_mask.fill_diagonal_(False)
    neg_mask[torch.arange(m), pos_idx] = False
    neg_logits = logits.masked_fill(~neg_mask, float("-inf"))
    n_neg = m - 2
    # importance weights w_j = exp(beta * s_j) / mean_j exp(beta * s_j), computed in log space
    scaled = torch.where(neg_mask, beta * neg_logits, torch.full_like(neg_logits, float("-inf")))
    log_w = scaled - (torch.logsumexp(scaled, dim=1, keepdim=True) - math.log(n_neg))
    log_weighted = torch.logsumexp(log_w + neg_logits, dim=1)          # log sum_j w_j exp(s_j)
    neg = (log_weighted.exp() - tau_plus * n_neg * pos_logit.exp()) / (1 - tau_plus)
    neg = torch.clamp(neg, min=n_neg * math.exp(-1 / tau))
    return (-(pos_logit - torch.logaddexp(pos_logit, neg.log()))).mean()


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric squared-L2 Chamfer distance between point sets pred [B, n, 3] and target [B, m, 3]:
    mean_i min_j |p_i - t_j|^2 + mean_j min_i |p_i - t_j|^2, averaged over the batch."""
    d = torch.cdist(pred.float(), target.float()).square()           # [B, n, m]
    return (d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)).mean()


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/p)*(W/p), p*p*3] in row-major patch order (matching the ViT tokens)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def masked_patch_mse(pred: torch.Tensor, images: torch.Tensor, mask_idx: torch.Tensor, p: int,
                     norm_pix: bool = True) -> torch.Tensor:
    """MSE between predicted pixels of the masked patches pred [B, M, p*p*3] and the image's patches,
    with per-patch normalised targets when ``norm_pix`` (MAE)."""
    target = patchify(images, p)
    target = torch.gather(target, 1, mask_idx[..., None].expand(-1, -1, target.shape[-1]))
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return (pred.float() - target).square().mean()
