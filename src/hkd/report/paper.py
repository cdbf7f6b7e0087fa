"""Numbers published in the paper (shared/paper/hkd-paper.md §5), shown beside the
reproduced ones and never used as reproduced values.

Each main table is a list of (method, NFE, FID) rows; ``REPRODUCED`` says which of them
the suite computes itself and from which of its own rows."""

#: Table 1: CIFAR-10 unconditional, Inception FID-50k against the training set
TABLE1 = [
    ("DDPM", 1000, 3.17),
    ("Score SDE", 2000, 2.38),
    ("DDIM", 100, 4.16),
    ("DDIM", 10, 13.36),
    ("EDM", 35, 1.97),
    ("EDM", 15, 5.62),
    ("KD", 1, 9.36),
    ("PD", 1, 8.34),
    ("CD (LPIPS)", 1, 3.55),
    ("DMD", 1, 3.77),
    ("1-Rectified flow", 1, 6.18),
    ("2-Rectified flow", 1, 4.85),
    ("3-Rectified flow", 1, 5.21),
    ("2-Rectified flow++", 1, 3.38),
    ("CT (LPIPS)", 1, 8.70),
    ("iCT", 1, 2.83),
    ("iCT-deep", 1, 2.51),
    ("ECM", 1, 3.60),
    ("HKD", 1, 3.30),
]
#: Table 2: FFHQ 64x64 unconditional
TABLE2 = [("DDIM", 10, 18.30), ("EDM", 79, 2.47), ("EDM", 15, 9.85), ("ECM", 1, 5.99), ("HKD", 1, 5.70)]
#: Table 4: CIFAR-10 class-conditional
TABLE4 = [
    ("Score SDE", 2000, 2.20),
    ("EDM", 35, 1.79),
    ("DMD w/o REG", 1, 5.58),
    ("DMD w/o KL", 1, 3.82),
    ("DMD", 1, 2.66),
    ("HKD", 1, 2.77),
]

#: Table 3, CIFAR-10 unconditional, Inception FID-50k, by ablation (pipeline.ABLATIONS keys;
#: "full" = all three components)
TABLE3_FID = {"no_koopman": 5.72, "no_trajectory": 5.57, "no_hierarchy": 4.78, "full": 3.30}

#: Table 5: FID mean and std over 5 runs, by epoch ("before" = before training)
TABLE5 = {
    "before": (447.13, None),
    0: (11.82, 0.29),
    10: (5.70, 0.21),
    20: (4.71, 0.17),
    52: (3.31, 0.02),
    53: (3.30, 0.02),
}

#: Table 6: seconds per image on one V100, (method, NFE, seconds)
TABLE6 = [
    ("DDPM", 1000, 15.32),
    ("Score SDE", 2000, 45.89),
    ("DDIM", 10, 0.51),
    ("DDIM", 100, 2.35),
    ("EDM", 35, 0.69),
    ("EDM", 15, 0.30),
    ("KD", 1, 0.26),
    ("PD", 1, 0.28),
    ("CD", 1, 0.02),
    ("DMD", 1, 0.03),
    ("RF", 1, 0.03),
    ("CT/iCT/ECM", 1, 0.02),
    ("HKD", 1, 0.03),
]


def reproduced_key(method: str, nfe: int, teacher_nfe: int) -> str | None:
    """The suite's own sampler that a paper row corresponds to, or None (cited only):
    ``teacher`` (the EDM teacher at the trajectories' NFE), ``teacher_nfe<N>`` (at another
    NFE), ``kd`` (the no-Koopman one-step distillation ablation), ``hkd``."""
    if method == "EDM":
        return "teacher" if nfe == teacher_nfe else f"teacher_nfe{nfe}"
    if method == "KD":
        return "kd"
    if method == "HKD":
        return "hkd"
    return None
