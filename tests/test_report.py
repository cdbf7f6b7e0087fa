"""Report tables built from metrics files."""

import pytest

from hkd.report.build import ablation_table
from hkd.report.paper import TABLE3_FID


def metrics(hkd_fid):
    return {"rows": [{"key": "teacher", "fid": 10.0}, {"key": "hkd", "fid": hkd_fid}]}


def test_table3_rows_ordering_and_paper_column():
    abl = {"no_koopman": {"fid": 30.0}, "no_trajectory": {"fid": 25.0}, "no_hierarchy": {"fid": 22.0}}
    df, ordering = ablation_table(metrics(20.0), abl)
    assert list(df["Koopman evolution"]) == ["no", "yes", "yes", "yes"]
    assert list(df["Trajectory consistency"]) == ["no", "no", "yes", "yes"]
    assert list(df["Hierarchy"]) == ["yes", "yes", "no", "yes"]
    assert list(df["FID (this run)"]) == [30.0, 25.0, 22.0, 20.0]
    assert list(df["FID (paper, CIFAR-10)"]) == [TABLE3_FID[k] for k in
                                                   ("no_koopman", "no_trajectory", "no_hierarchy", "full")]
    assert df["FID / full HKD (this run)"].iloc[0] == pytest.approx(1.5)
    assert ordering == {"full_best": True, "no_koopman_worst": True}

    _, ordering = ablation_table(metrics(23.0), abl)  # an ablation beats the full model
    assert ordering == {"full_best": False, "no_koopman_worst": True}
    _, ordering = ablation_table(metrics(20.0), dict(abl, no_trajectory={"fid": 31.0}))
    assert ordering == {"full_best": True, "no_koopman_worst": False}
    df, ordering = ablation_table(metrics(20.0), {"no_hierarchy": {"fid": 22.0}})
    assert len(df) == 2 and ordering == {"full_best": True, "no_koopman_worst": None}
