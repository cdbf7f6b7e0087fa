"""Minimal reproduction: does torch.compile give NaN or wrong results for the teacher network
on this CPU, and in which piece?

    python workflow/scripts/repro_compile_nan.py --config configs/default.yaml --threads 2
    python workflow/scripts/repro_compile_nan.py --teacher results/default/teacher/teacher.pt

Prints the torch version and the CPU's vector / bf16 flags, then compares compiled against
eager (the compile guard's check: outputs, and for training the gradients of parameters and
inputs for a fixed random cotangent) for:

1. the whole denoiser D(x; sigma), inference and training, in each precision (bf16 autocast,
   fp32) and memory format (channels-last as the stages run it, contiguous);
2. one piece of each kind (GroupNorm, 3x3 / resampling convolution, the embedding Linear,
   a plain, a resampling and an attention UNet block, the noise embedding), compiled alone on
   the inputs it sees inside the network (``--pieces all``: every UNet block).

A row that is ``NaN``, ``WRONG`` or ``FAIL`` (the compiler raised) names the failing combination; the exit code is 1 when
any row is. Random weights are moved off EDM's near-zero initialisation unless
``--teacher`` gives a trained checkpoint (a trained teacher's activations reproduce more).
Compiles from an empty inductor cache, so each row also builds its kernels (minutes).
"""

import argparse
import os
import tempfile

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="hkd-repro-inductor-"))

import torch

from hkd.compile_guard import TOLERANCE, call_results, compare
from hkd.config import load_config
from hkd.nn.precond import EDMPrecond
from hkd.nn.unet import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from hkd.teacher.network import load_teacher, teacher_kwargs

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return f"{model}; flags: {have}; {os.cpu_count()} logical cores"


def build_network(args) -> EDMPrecond:
    if args.teacher:
        return load_teacher(args.teacher).requires_grad_(True)
    torch.manual_seed(0)
    net = EDMPrecond(**teacher_kwargs(load_config(args.config)))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def network_inputs(net: EDMPrecond, batch: int, sigma: float):
    gen = torch.Generator().manual_seed(1)
    shape = (batch, net.img_channels, net.img_resolution, net.img_resolution)
    return torch.randn(shape, generator=gen) * sigma, torch.full((batch,), sigma)


def check(fn, args, params, dtype) -> dict:
    """The guard's comparison of ``fn`` compiled against eager, under ``dtype`` autocast."""
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    torch._dynamo.reset()  # each row from its own static-shape graph (pieces share forward code)
    with ctx:
        eager = call_results(fn, args, {}, params)
        try:
            compiled = call_results(torch.compile(fn), args, {}, params)
        except Exception as exc:  # a compiler failure is a row of its own, not the end of the script
            return {"ok": False, "why": f"compiling failed: {type(exc).__name__}: {str(exc)[:200]}"}
    return compare(compiled, eager, TOLERANCE[dtype or torch.float32])


def row(name: str, report: dict) -> bool:
    diffs = "  ".join(
        f"{k.replace('max_rel_diff_', '')} {v:.2e}"
        for k, v in report.items()
        if k.startswith("max_rel_diff_")
    )
    verdict = (
        "ok"
        if report["ok"]
        else (
            "NaN"
            if "non-finite" in report["why"]
            else "FAIL"
            if "compiling failed" in report["why"]
            else "WRONG"
        )
    )
    print(f"{verdict:5s} {name:58s} {diffs}  {report.get('why', '')}", flush=True)
    return report["ok"]


def dtypes(args) -> tuple:
    return {"bf16": (torch.bfloat16,), "fp32": (None,), "both": (torch.bfloat16, None)}[args.precision]


def whole_network(net, args) -> bool:
    ok = True
    for dtype in dtypes(args):
        for fmt in (torch.channels_last, torch.contiguous_format):
            for train in (False, True):
                x, sigma = network_inputs(net, args.batch, args.sigma)
                net.to(memory_format=fmt).train(train)
                params = [p for p in net.parameters()] if train else []
                with torch.set_grad_enabled(train):
                    report = check(net, (x.contiguous(memory_format=fmt), sigma), params, dtype)
                name = (
                    f"denoiser {'training' if train else 'inference'} "
                    f"{'bf16' if dtype else 'fp32'} {'channels-last' if fmt is torch.channels_last else 'contiguous'}"
                )
                ok &= row(name, report)
    return ok


def piece_inputs(net, x, sigma, dtype) -> dict:
    """{module name: (module, captured positional inputs)} from one eager forward pass."""
    seen, hooks = {}, []

    def keep(name):
        def hook(module, inputs):  # returns None: the inputs pass on unchanged
            seen.setdefault(name, (module, tuple(t.detach().clone() for t in inputs)))

        return hook

    for name, m in net.named_modules():
        if isinstance(m, (GroupNorm, Conv2d, Linear, UNetBlock, PositionalEmbedding)):
            hooks.append(m.register_forward_pre_hook(keep(name)))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        net(x, sigma)
    for h in hooks:
        h.remove()
    return seen


def kind(module) -> str:
    if isinstance(module, UNetBlock):
        return (
            ("attention " if module.num_heads else "")
            + ("resampling " if module.conv0.up or module.conv0.down else "")
            + "UNet block"
        )
    if isinstance(module, Conv2d):
        return f"{'resampling' if module.up or module.down else f'{module.weight.shape[-1]}x'} convolution"
    return type(module).__name__


def pieces(net, args) -> bool:
    ok = True
    for dtype in dtypes(args):
        net.to(memory_format=torch.channels_last)
        x, sigma = network_inputs(net, args.batch, args.sigma)
        captured = piece_inputs(net.eval(), x.contiguous(memory_format=torch.channels_last), sigma, dtype)
        done = set()
        for name, (module, inputs) in captured.items():
            if args.pieces == "types" and kind(module) in done:
                continue
            done.add(kind(module))
            for train in (False, True):
                module.train(train)
                leaves = [t.requires_grad_(train) if t.is_floating_point() else t for t in inputs]
                params = (
                    [p for p in module.parameters()] + [t for t in leaves if t.requires_grad] if train else []
                )
                with torch.set_grad_enabled(train):
                    report = check(module, tuple(leaves), params, dtype)
                ok &= row(
                    f"{kind(module)} {name} {'training' if train else 'inference'} "
                    f"{'bf16' if dtype else 'fp32'}",
                    report,
                )
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config", default="configs/default.yaml", help="network of this config (random weights)"
    )
    ap.add_argument("--teacher", default=None, help="a teacher checkpoint instead of random weights")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--sigma", type=float, default=80.0, help="noise level of the inputs (80: the first Heun step)"
    )
    ap.add_argument("--pieces", choices=("types", "all", "none"), default="types")
    ap.add_argument("--pieces-only", action="store_true", help="skip the whole-network rows")
    ap.add_argument(
        "--precision",
        choices=("bf16", "fp32", "both"),
        default="both",
        help="autocast dtype(s) to test; fp32 = no autocast",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {cpu_description()}; {torch.get_num_threads()} threads")
    print(
        f"tolerance (relative L2, compile_guard.TOLERANCE): bf16 {TOLERANCE[torch.bfloat16]}, "
        f"fp32 {TOLERANCE[torch.float32]}",
        flush=True,
    )
    net = build_network(args)
    ok = whole_network(net, args) if not args.pieces_only else True
    if args.pieces != "none":
        ok &= pieces(net, args)
    print(
        "no compiled result differed from eager"
        if ok
        else "some compiled results differ from eager (rows above)"
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
