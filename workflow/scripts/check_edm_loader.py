"""Load an EDM network pickle with EDM's own code and with this suite's loader, and compare the
two denoisers on random inputs. Checks that the teachers shipped under resources/ are what
EDM itself reads (EDM's loader executes the network source stored in the file).

    python workflow/scripts/check_edm_loader.py --edm /path/to/NVlabs/edm --pickle resources/<file>.pkl

``--edm``: a checkout of https://github.com/NVlabs/edm (only its ``torch_utils`` and
``dnnlib`` packages are imported). Prints the largest difference; exits 1 unless it is 0.
"""

from __future__ import annotations

import argparse
import pickle
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edm", required=True, help="a checkout of NVlabs/edm")
    p.add_argument("--pickle", required=True, help="the EDM network pickle to check")
    args = p.parse_args()
    from hkd.teacher.edm_pickle import load_edm_pickle

    ours = load_edm_pickle(args.pickle)
    sys.path.insert(0, args.edm)
    import dnnlib  # noqa: F401  (EDM's; its persistence module unpickles the networks)

    with open(args.pickle, "rb") as f:
        theirs = pickle.load(f)["ema"].eval()  # noqa: S301 - a file this suite wrote
    gen = torch.Generator().manual_seed(0)
    shape = (8, ours.img_channels, ours.img_resolution, ours.img_resolution)
    x = torch.randn(shape, generator=gen)
    sigma = torch.exp(torch.linspace(-6, 4.4, 8))
    labels = torch.eye(ours.label_dim)[torch.arange(8) % ours.label_dim] if ours.label_dim else None
    with torch.no_grad():
        diff = (theirs(x, sigma, labels) - ours(x, sigma, labels)).abs().max().item()
    print(f"{args.pickle}: EDM's loader ({type(theirs).__module__}) vs edm_pickle: max |ΔD| = {diff}")
    return 0 if diff == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
