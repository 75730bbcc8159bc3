"""``SSFTModel``: two-stream extractor, feature blocks, SSTN and the complementary-learning modules.

Public surface (docs/ARCHITECTURE.md): ``extract``, ``pad``, ``affinity``, ``transfer``, ``dims``;
``forward_train`` gives everything the losses need. ``extract`` and ``transfer`` branch only on
Python values (the modality name, the config), never on tensor values, so both trace and export.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ssft_deploy.modality import modality_name
from train.config import ConfigError, SSFTConfig
from train.model.backbone import MODALITIES, TwoStream
from train.model.blocks import FeatureBlock
from train.model.complementary import Decoder, modality_discriminator, projection
from train.model.sstn import PARTS, TransferNetwork, affinity, neighbour_weights, neighbours, pad

ADVERSARY_PREFIXES = ("discriminator.", "projections.")


class SSFTModel(nn.Module):
    """cm-SSFT (Fig. 2). Modules present depend on the Table 3 switches of ``config``."""

    def __init__(self, config: SSFTConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        if config.num_classes is None or config.num_classes < 2:
            raise ConfigError(f"num_classes must be set (>= 2), got {config.num_classes}")
        self.config = config
        n, neck, pool = config.num_classes, config.neck, config.pool
        self.backbone = TwoStream(config.arch)
        c = self.backbone.channels
        self._dims = {"shared": c, "specific": c,
                      "transfer": (config.transfer_dim or c) if config.uses_transfer else None}
        self.feat_shared = FeatureBlock(c, n, neck, pool)
        self.feat_specific = nn.ModuleDict({m: FeatureBlock(c, n, neck, pool) for m in MODALITIES})
        self.sstn = (TransferNetwork(c, c, self._dims["transfer"], n, neck) if config.uses_transfer else None)
        self.discriminator = (modality_discriminator(c, config.disc_hidden)
                              if config.modality_adaptation else None)
        self.projections = (nn.ModuleDict({m: projection(c, c) for m in MODALITIES})
                            if config.project_adversarial else None)
        self.decoders = (nn.ModuleDict({m: Decoder(2 * c, config.decoder_channels)
                                        for m in MODALITIES}) if config.reconstruction else None)
        if load_pretrained and config.pretrained:
            from train.model.pretrained import resolve

            self.backbone.load_imagenet(resolve(config.pretrained))

    # -- contract -----------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int | None]:
        """``{"shared": Ds, "specific": Dp, "transfer": Dt}`` (Dt None when SSTN is off)."""
        return dict(self._dims)

    @property
    def transfer_parts(self) -> tuple[str, ...]:
        return self.config.transfer_parts

    def extract(self, images: torch.Tensor, modality: str | int = "rgb"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1: normalised images ``[B,3,H,W]`` -> post-BN (shared ``[B,Ds]``, specific
        ``[B,Dp]``) through the streams of ``modality``."""
        m = modality_name(modality)
        x = self.backbone.conv1[m](images)
        _, shared = self.feat_shared(self.backbone.shared(x))
        _, specific = self.feat_specific[m](self.backbone.specific[m](x))
        return shared, specific

    def forward(self, images: torch.Tensor, modality: str | int = "rgb"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.extract(images, modality)

    def pad(self, shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor
            ) -> torch.Tensor:
        """Eq. 5 with the ShT / SpT switches of the config."""
        return pad(shared, specific, modality, self.transfer_parts or PARTS)

    def affinity(self, shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k neighbour lists of Eq. 6-8 (the ``topk_affinity`` contract, k from config)."""
        return affinity(shared, specific, modality, self.config.k)

    def transfer(self, z: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Eq. 10-11: ``z [N,2Dp+Ds]``, ``idx [N,2k]``, ``w [N,2k]`` -> post-BN ``T [N,Dt]``."""
        if self.sstn is None:
            raise ConfigError("this model has no SSTN (shared_transfer and specific_transfer "
                              "are both off): use the extractor features directly")
        return self.sstn(z, idx, w)[1]

    # -- training -----------------------------------------------------------------------------
    def forward_train(self, rgb: torch.Tensor, ir: torch.Tensor) -> dict[str, torch.Tensor]:
        """All features, logits and reconstructions of a batch (RGB rows first, then IR)."""
        b = self.backbone
        nr = rgb.shape[0]
        xr, xi = b.conv1["rgb"](rgb), b.conv1["ir"](ir)
        h_map = b.shared(torch.cat([xr, xi]))
        p_maps = {"rgb": b.specific["rgb"](xr), "ir": b.specific["ir"](xi)}
        h_pre, h_post = self.feat_shared(h_map)
        pr, pi = self.feat_specific["rgb"](p_maps["rgb"]), self.feat_specific["ir"](p_maps["ir"])
        modality = torch.cat([torch.zeros(nr, dtype=torch.long, device=rgb.device),
                              torch.ones(ir.shape[0], dtype=torch.long, device=rgb.device)])
        out = {
            "modality": modality,
            "h_pre": h_pre, "h": h_post, "h_logits": self.feat_shared.classifier(h_post),
            "p_pre": torch.cat([pr[0], pi[0]]), "p": torch.cat([pr[1], pi[1]]),
            "p_logits": torch.cat([self.feat_specific["rgb"].classifier(pr[1]),
                                   self.feat_specific["ir"].classifier(pi[1])]),
        }
        if self.sstn is not None:
            z = self.pad(out["h"], out["p"], modality)
            idx, w, valid = neighbours(out["h"], out["p"], modality, self.config.k)
            if self.config.affinity_grad:   # Eq. 6-10 end to end: A's kept values carry gradient
                w = neighbour_weights(out["h"], out["p"], modality, idx, valid)
            out["t_pre"], out["t"] = self.sstn(z, idx, w)
            out["t_logits"] = self.sstn.feat.classifier(out["t"])
        if self.decoders is not None:
            out["recon"] = torch.cat([self.decoders["rgb"](p_maps["rgb"], h_map[:nr]),
                                      self.decoders["ir"](p_maps["ir"], h_map[nr:])])
        return out

    def _params(self, adversary: bool) -> Iterator[nn.Parameter]:
        for name, p in self.named_parameters():
            if name.startswith(ADVERSARY_PREFIXES) == adversary:
                yield p

    def network_parameters(self) -> list[nn.Parameter]:
        """Theta_N of Eq. 21: everything but the discriminator and the projections."""
        return [p for p in self._params(False) if p.requires_grad]

    def adversary_parameters(self) -> list[nn.Parameter]:
        """Theta_D and Theta^m of Eq. 21 (updated in the max step only)."""
        return list(self._params(True))
