"""Numbers published in the paper (shared/paper/hkd-paper.md), shown beside the reproduced
ones and never used as reproduced values."""

#: Table 3, CIFAR-10 unconditional, Inception FID-50k, by ablation (pipeline.ABLATIONS keys;
#: "full" = all three components)
TABLE3_FID = {"no_koopman": 5.72, "no_trajectory": 5.57, "no_hierarchy": 4.78, "full": 3.30}
