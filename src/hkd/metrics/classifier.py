"""A small digit classifier trained on the training split: the offline feature extractor
for FID / IS on the embedded default (Inception weights cannot be downloaded here)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hkd.data.dataset import load_dataset
from hkd.io import load_torch, save_torch

FEATURE_DIM = 128
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """conv-conv-pool x2 -> 128-d penultimate features -> 10 logits (input [-1, 1], 1 channel,
    ``resolution`` x ``resolution``: 32 for the padded digits, 28 for the unpadded ones)."""

    def __init__(self, width: int = 32, resolution: int = 32):
        super().__init__()
        w, pooled = width, resolution // 4
        self.resolution = resolution
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * pooled * pooled, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x):
        f = self.features(x)
        return f, self.head(f)


def train_classifier(cfg: dict, data_path: str, out_path: str) -> dict:
    ecfg = cfg["evaluate"]
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    torch.manual_seed(cfg["seed"] + 2)
    d = load_dataset(data_path)
    x, y = torch.from_numpy(d["train_images"]), torch.from_numpy(d["train_labels"])
    net = DigitClassifier(resolution=x.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=ecfg["classifier_lr"])
    bs = ecfg["classifier_batch_size"]
    steps = ecfg["classifier_epochs"] * ((len(x) + bs - 1) // bs)
    bar = tqdm(total=steps, desc="classifier", unit="step", mininterval=2)
    for _ in range(ecfg["classifier_epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), bs):
            rows = order[start : start + bs]
            xb = x[rows]
            # small random shifts make the features robust to slightly off-centre samples
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb)[1], y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(b)[1] for b in torch.from_numpy(d["heldout_images"]).split(500)])
    acc = float((logits.argmax(1).numpy() == d["heldout_labels"]).mean())
    save_torch(
        {
            "kind": "digit_classifier",
            "state": net.state_dict(),
            "heldout_accuracy": acc,
            "feature_dim": FEATURE_DIM,
            "resolution": net.resolution,
        },
        out_path,
    )
    return {"heldout_accuracy": acc}


def load_classifier(path: str) -> tuple[DigitClassifier, float]:
    ckpt = load_torch(path, "classifier checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "digit_classifier":
        raise ValueError(f"{path} is not a classifier written by 'hkd classifier'")
    net = DigitClassifier(resolution=ckpt.get("resolution", 32))
    net.load_state_dict(ckpt["state"], strict=True)
    return net.eval().requires_grad_(False), float(ckpt["heldout_accuracy"])


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] (C = 1 or 3, grey) -> float [B, 1, H, W] in [-1, 1]."""
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    return x / 127.5 - 1.0


def accuracy_on(net: DigitClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = torch.cat([net(b)[1] for b in torch.from_numpy(images).float().split(500)])
    return float((logits.argmax(1).numpy() == labels).mean())
