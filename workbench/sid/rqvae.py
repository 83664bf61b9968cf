"""RQ-VAE: an MLP encoder, L residual codebooks of K codes, an MLP decoder.

    x (B, D_in) --standardise--> encoder --> z (B, d)
    r_0 = z;  for each level l: c_l = argmin_k ||r_l - e_{l,k}||,  q_l = e_{l,c_l},  r_{l+1} = r_l - q_l
    z_q = sum_l q_l  --(straight-through or rotation trick)-->  decoder --> x_hat (B, D_in)

Loss = ||x_hat - x_std||^2 + sum_l ( ||sg(r_l) - q_l||^2 + beta * ||r_l - sg(q_l)||^2 ).

What public reimplementations get wrong, and what this file does about it:
- inputs on very different scales: `mean` and `std` buffers standardise them (set from data);
- random codebooks collapse to a few codes: `init_codebooks` runs k-means level by level on the
  residuals of real data; `restart_dead` re-seeds codes nobody used from live residuals;
- a commitment loss that is computed but never weighted in: `beta` multiplies it in `forward`;
- gradients that stop at the quantiser: straight-through estimator, or the rotation trick
  (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick") when
  `rotation_trick=True`;
- IDs that change after save/load: codes depend only on the saved tensors (`quantize` is a pure
  nearest-neighbour search in eval mode).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.sid.config import RQVAEConfig


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def sq_dist(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, d), (K, d) -> (B, K) squared Euclidean distances."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ codes.T + (codes * codes).sum(1)[None]


def kmeans(x: torch.Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, d) -> (k, d) centroids: k-means++ seeding, then Lloyd iterations; empty clusters get far points."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} points for {k} codes, got {n}")
    cent = x[torch.randint(n, (1,), generator=generator, device=x.device)]
    d = sq_dist(x, cent).squeeze(1).clamp_min(0)
    for _ in range(1, k):  # k-means++: next seed with probability proportional to squared distance
        p = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1 / n)
        nxt = x[torch.multinomial(p, 1, generator=generator)]
        cent = torch.cat([cent, nxt])
        d = torch.minimum(d, sq_dist(x, nxt).squeeze(1).clamp_min(0))
    for _ in range(iters):
        assign = sq_dist(x, cent).argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp_min(1)[:, None])
        if empty.any():  # re-seed empty clusters with the points farthest from their centroid
            far = sq_dist(x, cent).gather(1, assign[:, None]).squeeze(1).topk(int(empty.sum())).indices
            cent[empty] = x[far]
    return cent


def rotate_to(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation trick: returns a tensor equal to q whose gradient w.r.t. e is a rotation and rescale.

    q_out = sg(|q|/|e| * R) e with R the rotation taking e/|e| to q/|q| (R and the scale are constants).
    """
    eps = 1e-8
    e_hat = e / (e.norm(dim=-1, keepdim=True) + eps)
    q_hat = q / (q.norm(dim=-1, keepdim=True) + eps)
    r = e_hat + q_hat
    r = (r / (r.norm(dim=-1, keepdim=True) + eps)).detach()
    e_hat, q_hat = e_hat.detach(), q_hat.detach()
    scale = (q.norm(dim=-1, keepdim=True) / (e.norm(dim=-1, keepdim=True) + eps)).detach()
    # R e = e - 2 (e.r) r + 2 (e.e_hat) q_hat
    rot = e - 2 * (e * r).sum(-1, keepdim=True) * r + 2 * (e * e_hat).sum(-1, keepdim=True) * q_hat
    return scale * rot


class RQVAE(nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(cfg.input_dim))
        self.register_buffer("std", torch.ones(cfg.input_dim))
        self.encoder = mlp([cfg.input_dim, *cfg.hidden, cfg.latent_dim])
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), cfg.input_dim])
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(k, cfg.latent_dim) * 0.01) for k in cfg.codebook_sizes)  # L x (K_l, d)

    # pieces -----------------------------------------------------------------------------------
    def set_standardisation(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.input_dim:
            raise ValueError(f"RQ-VAE expects (N, {self.cfg.input_dim}) vectors, got {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D_in) raw vectors -> (B, d) latents."""
        return self.encoder(self.standardise(x))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, d) -> codes (B, L), residuals before each level (B, L, d), chosen code vectors (B, L, d)."""
        residuals, quants, codes = [], [], []
        r = z
        for lvl in range(self.cfg.levels):
            c = sq_dist(r, self.codebooks[lvl]).argmin(1)  # (B,)
            q = self.codebooks[lvl][c]
            residuals.append(r)
            quants.append(q)
            codes.append(c)
            r = r - q.detach()  # each level's codebook learns from its own loss only
        return torch.stack(codes, 1), torch.stack(residuals, 1), torch.stack(quants, 1)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D_in) raw vectors -> (B, L) int64 codes (a pure function of the weights)."""
        return self.quantize(self.encode(x))[0]

    # training -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses and intermediates for a batch of raw vectors (B, D_in)."""
        xs = self.standardise(x)
        z = self.encoder(xs)
        codes, res, quant = self.quantize(z)  # (B, L), (B, L, d), (B, L, d)

        # codebook and commitment losses, level by level on the residual each level saw
        codebook = F.mse_loss(quant, res.detach())
        commit = F.mse_loss(res, quant.detach())

        # gradients pass the quantiser by straight-through or rotation
        zq = quant.sum(1)
        z_dec = rotate_to(z, zq) if self.cfg.rotation_trick else z + (zq - z).detach()
        recon = F.mse_loss(self.decoder(z_dec), xs)

        loss = recon + codebook + self.cfg.beta * commit
        return {"loss": loss, "recon": recon, "codebook": codebook, "commit": commit, "z": z, "codes": codes,
                "residuals": res}

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means on the latents of `x` (raw vectors), then on each level's residuals."""
        r = self.encode(x)
        for lvl in range(self.cfg.levels):
            self.codebooks[lvl].copy_(kmeans(r, self.cfg.codebook_sizes[lvl], generator=generator))
            r = r - self.codebooks[lvl][sq_dist(r, self.codebooks[lvl]).argmin(1)]

    @torch.no_grad()
    def restart_dead(self, usage: list[torch.Tensor], residuals: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed codes with zero `usage` (L x (K_l,)) from live `residuals` (N, L, d); returns how many."""
        n = 0
        for lvl in range(self.cfg.levels):
            dead = torch.nonzero(usage[lvl] == 0).flatten()
            if len(dead) == 0:
                continue
            pick = torch.randint(residuals.shape[0], (len(dead),), generator=generator, device=residuals.device)
            noise = torch.randn(len(dead), residuals.shape[2], generator=generator, device=residuals.device)
            self.codebooks[lvl][dead] = residuals[pick, lvl] + 1e-3 * noise * residuals[:, lvl].std()
            n += len(dead)
        return n
