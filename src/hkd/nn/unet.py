"""EDM-compatible DDPM++ U-Net ("SongUNet").

Module and parameter names (``map_noise``, ``enc['32x32_block0'].conv0.weight`` ...)
follow EDM's ``training/networks.py`` so that released EDM snapshots can be loaded
by name, and so that the HKD encoder/decoder split is a split of the same modules.
The encoder and decoder halves are exposed separately (``encode`` / ``decode``)
because HKD evolves the encoder's features before they reach the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import silu


def _init_weight(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


class Linear(nn.Module):
    def __init__(
        self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1.0, init_bias=0.0
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fan = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_init_weight([out_features, in_features], **fan) * init_weight)
        self.bias = nn.Parameter(_init_weight([out_features], **fan) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(nn.Module):
    """3x3/1x1 convolution with optional 2x up/down-sampling by a separable FIR filter."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel,
        bias=True,
        up=False,
        down=False,
        resample_filter=(1, 1),
        fused_resample=False,
        init_mode="kaiming_normal",
        init_weight=1.0,
        init_bias=0.0,
    ):
        super().__init__()
        assert not (up and down)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fan = dict(
            mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel
        )
        self.weight = (
            nn.Parameter(_init_weight([out_channels, in_channels, kernel, kernel], **fan) * init_weight)
            if kernel
            else None
        )
        self.bias = nn.Parameter(_init_weight([out_channels], **fan) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if (up or down) else None)

    def forward(self, x):
        F = torch.nn.functional
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(
                x,
                f.mul(4).tile([self.in_channels, 1, 1, 1]),
                groups=self.in_channels,
                stride=2,
                padding=max(f_pad - w_pad, 0),
            )
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(
                    x,
                    f.mul(4).tile([self.in_channels, 1, 1, 1]),
                    groups=self.in_channels,
                    stride=2,
                    padding=f_pad,
                )
            if self.down:
                x = F.conv2d(
                    x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad
                )
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(
            x,
            num_groups=self.num_groups,
            weight=self.weight.to(x.dtype),
            bias=self.bias.to(x.dtype),
            eps=self.eps,
        )


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax over keys of the scaled query-key products [n, q, k], computed in at least fp32
    whatever autocast is in force: EDM keeps these in fp32 in its fp16 networks, and under
    ``torch.autocast`` the einsum (a matmul) would otherwise run in the autocast dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp64 stays fp64 (reference runs)
    with torch.autocast(q.device.type, enabled=False):
        w = torch.einsum("ncq,nck->nqk", q.to(dtype), k.to(dtype) / math.sqrt(k.shape[1]))
        return w.softmax(dim=2)


class UNetBlock(nn.Module):
    """Residual block with noise-embedding modulation and optional self-attention."""

    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        num_heads=None,
        channels_per_head=64,
        dropout=0.0,
        skip_scale=1.0,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
        init=None,
        init_zero=None,
        init_attn=None,
    ):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = (
            0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        )
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
        )
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(
                in_channels,
                out_channels,
                kernel=kernel,
                up=up,
                down=down,
                resample_filter=resample_filter,
                **init,
            )
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(
                out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init)
            )
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x + params))
        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = (
                self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            )
            a = torch.einsum("nqk,nck->ncq", attention_weights(q, k).to(q.dtype), v)
            x = (self.proj(a.reshape(b, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _check_kinds(embedding_type: str, encoder_type: str, decoder_type: str) -> None:
    """EDM's SongUNet variants that this module builds."""
    if embedding_type not in ("fourier", "positional"):
        raise ValueError(f"embedding_type {embedding_type!r}")
    if encoder_type not in ("standard", "skip", "residual"):
        raise ValueError(f"encoder_type {encoder_type!r}")
    if decoder_type not in ("standard", "skip"):
        raise ValueError(f"decoder_type {decoder_type!r}")


class SongUNet(nn.Module):
    """DDPM++/NCSN++ U-Net with EDM's module names; see ``encode``/``decode``."""

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.10,
        label_dropout=0.0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ):
        super().__init__()
        _check_kinds(embedding_type, encoder_type, decoder_type)
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        block_kwargs = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=dict(init_mode="xavier_uniform", init_weight=1e-5),
            init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)),
        )
        # modules are created in EDM's order: their initial weights come from the global RNG in turn
        self._build_mapping(embedding_type, noise_channels, emb_channels, label_dim, augment_dim, init)
        levels = dict(
            img_resolution=img_resolution,
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_blocks=num_blocks,
            attn_resolutions=attn_resolutions,
        )
        cout = self._build_encoder(in_channels, encoder_type, levels, block_kwargs)
        #: channels of every skip tensor, in encoder order (the last is the bottleneck)
        self.skip_channels = [b.out_channels for name, b in self.enc.items() if "aux" not in name]
        self.skip_resolutions = [int(name.split("x")[0]) for name in self.enc if "aux" not in name]
        self._build_decoder(cout, self.skip_channels, out_channels, decoder_type, levels, block_kwargs)

    def _build_mapping(self, embedding_type, noise_channels, emb_channels, label_dim, augment_dim, init):
        """Noise, label and augmentation embeddings and the two mapping layers."""
        self.map_noise = (
            PositionalEmbedding(noise_channels, endpoint=True)
            if embedding_type == "positional"
            else FourierEmbedding(noise_channels)
        )
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

    def _build_encoder(self, in_channels, encoder_type, levels: dict, block_kwargs: dict) -> int:
        """The down path ``enc``, level by level; returns the bottleneck's channels."""
        self.enc = nn.ModuleDict()
        init, resample_filter = block_kwargs["init"], block_kwargs["resample_filter"]
        cout = caux = in_channels
        for level, mult in enumerate(levels["channel_mult"]):
            res = levels["img_resolution"] >> level
            if level == 0:
                cin, cout = cout, levels["model_channels"]
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux,
                        cout,
                        kernel=3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **init,
                    )
                    caux = cout
            for idx in range(levels["num_blocks"]):
                cin, cout = cout, levels["model_channels"] * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in levels["attn_resolutions"]), **block_kwargs
                )
        return cout

    def _build_decoder(self, cout, skips, out_channels, decoder_type, levels: dict, block_kwargs: dict):
        """The up path ``dec`` from the bottleneck's ``cout`` channels, taking the encoder's
        ``skips`` (their channels) from the last."""
        self.dec = nn.ModuleDict()
        skips = list(skips)
        channel_mult, num_blocks = levels["channel_mult"], levels["num_blocks"]
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = levels["img_resolution"] >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), levels["model_channels"] * mult
                attention = idx == num_blocks and res in levels["attn_resolutions"]
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=attention, **block_kwargs
                )
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels,
                        out_channels,
                        kernel=0,
                        up=True,
                        resample_filter=block_kwargs["resample_filter"],
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    cout, out_channels, kernel=3, **block_kwargs["init_zero"]
                )

    def embed(self, noise_labels, class_labels=None, augment_labels=None):
        """Noise (and label) embedding shared by every block."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # sin/cos order as EDM
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: class_labels is required")
            tmp = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([tmp.shape[0], 1], device=tmp.device) >= self.label_dropout
                tmp = tmp * keep.to(tmp.dtype)
            emb = emb + self.map_label(tmp * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        return silu(self.map_layer1(emb))

    def encode(self, x, emb) -> list[torch.Tensor]:
        """Down path: every skip tensor in order; the last one is the bottleneck."""
        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor], emb) -> torch.Tensor:
        """Up path from the (possibly evolved) skips; starts from the last one."""
        skips = list(skips)
        x = skips[-1]
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        return self.decode(self.encode(x, emb), emb)
