"""The perceptual term of the HKD loss: LPIPS through the ``lpips`` package.

``lpips`` ships its calibrated linear layers; the backbone (torchvision's ImageNet VGG16 or
AlexNet) is read from ``hkd.perceptual_weights`` (a torchvision state-dict file) or, when
that is null, from the torch hub cache, where torchvision keeps its downloads (fetched
there on first use when the machine is online). The backbone is never downloaded
behind the user's back on a machine without internet: a missing file is an error that
names the key. Images are compared as consistency models do: in [-1, 1], grey-scale
repeated to 3 channels, bilinearly resized to 224x224.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

#: hkd.perceptual -> (lpips trunk name, torchvision weights enum name)
BACKBONES = {"lpips-vgg": ("vgg", "VGG16_Weights"), "lpips-alex": ("alex", "AlexNet_Weights")}
RESIZE = 224


def backbone_url(kind: str) -> str:
    import torchvision

    return getattr(torchvision.models, BACKBONES[kind][1]).IMAGENET1K_V1.url


def _torchvision_state(kind: str, weights: str | None) -> dict:
    """The torchvision backbone state dict from ``weights`` or the hub cache / its URL."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"hkd.perceptual_weights: LPIPS backbone weights not found: {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"hkd.perceptual_weights: cannot read {path} as a torchvision state dict ({exc})"
            ) from exc
    url = backbone_url(kind)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except Exception as exc:
        raise RuntimeError(
            f"hkd.perceptual: the {kind} backbone is not in the torch hub cache ({cached}) and "
            f"cannot be downloaded from {url} ({exc}); put the file there, set "
            "hkd.perceptual_weights to a local copy, or use perceptual: none"
        ) from exc


class Perceptual(nn.Module):
    """LPIPS distance per image pair, [B], frozen and in eval mode."""

    def __init__(self, kind: str, weights: str | None = None):
        super().__init__()
        import lpips

        trunk, _ = BACKBONES[kind]
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore")
            self.lpips = lpips.LPIPS(net=trunk, pretrained=True, pnet_rand=True, verbose=False)
        state = _torchvision_state(kind, weights)
        # lpips splits torchvision's `features` into slices that keep the layer indices
        ours = {}
        for name in self.lpips.net.state_dict():
            _, index, param = name.split(".")  # sliceN.<index>.<weight|bias>
            key = f"features.{index}.{param}"
            if key not in state:
                raise ValueError(
                    f"LPIPS backbone weights lack {key} (is this a torchvision {kind[6:]} state dict?)"
                )
            ours[name] = state[key]
        try:
            self.lpips.net.load_state_dict(ours, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"LPIPS backbone weights do not fit torchvision's {kind[6:]}: {exc}") from exc
        self.lpips.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        if x.shape[-1] != RESIZE:
            x = nn.functional.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
            y = nn.functional.interpolate(y, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        return self.lpips(x.float(), y.float()).flatten()


def build_perceptual(hcfg: dict, device) -> Perceptual | None:
    """The configured perceptual term (None for ``perceptual: none``)."""
    if hcfg["perceptual"] == "none":
        return None
    return Perceptual(hcfg["perceptual"], hcfg["perceptual_weights"]).to(device)
