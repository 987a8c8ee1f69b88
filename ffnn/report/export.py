"""The report's files: csv, markdown, LaTeX (pandas Styler, booktabs), one self-contained HTML page, PNGs."""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .build import Report, ReportError
from .plan import FAMILIES
from .plots import PLOTS
from .runs import COLLAPSED_AT
from .sequential import METHOD_NAME

NO_STEPS = "No capacity steps among the models present."
LEFT = {"Model", "Spec", "Device", "Family", "Comparison", "Change", "Pairing", "Verdict", "Failures"}


def _num(x: float, spec: str = ".2f") -> str:
    return "-" if x is None or pd.isna(x) else format(x, spec)


def display_tables(report: Report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables as formatted text, shared by the markdown, LaTeX and HTML files."""
    s = report.summary
    pct = f"{report.cfg.confidence:.0%} CI"
    models = pd.DataFrame({
        "Model": s["model"], "Spec": s["spec"], "Params": [f"{n:,}" for n in s["n_params"]],
        "Seeds": s["n_seeds"].astype(str),
        "Diverged": s["n_diverged"].astype(str), "Crashed": s["n_crashed"].astype(str),
        "Collapsed": s["n_collapsed"].astype(str), "Unfinished": s["n_unfinished"].astype(str),
        "Mean (%)": [_num(v) for v in s["mean"]], "Std": [_num(v) for v in s["std"]],
        pct: [f"[{_num(lo)}, {_num(hi)}]" if not pd.isna(lo) else "-" for lo, hi in zip(s["ci_low"], s["ci_high"])],
        "Min": [_num(v) for v in s["min"]], "Max": [_num(v) for v in s["max"]],
        "Train (s)": [_num(v, ".1f") for v in s["train_seconds"]], "Device": s["devices"],
    })
    c = report.comparisons
    comparisons = pd.DataFrame({
        "Family": c["family"], "Comparison": [f"{a} -> {b}" for a, b in zip(c["a"], c["b"])], "Change": c["change"],
        "Pairing": [f"paired, n={r.n_a}" if r.paired else f"Welch, {r.n_a} vs {r.n_b}" for r in c.itertuples()],
        "r": [_num(v) for v in c["corr"]],
        "Diff (pts)": [f"{v:+.2f}" if not pd.isna(v) else "-" for v in c["diff"]],
        "Deciding interval": ["-" if pd.isna(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}]" for r in c.itertuples()],
        "Interval of": [{"difference": "t-test", "equivalence": "TOST", "repeated": "RCI"}.get(v, "-")
                        for v in c["interval"]],
        "Level": [_num(v, ".2%") for v in c["level"]],
        "p": [_num(v, ".2g") for v in c["p"]], "Holm p": [_num(v, ".2g") for v in c["p_adj"]],
        "TOST p": [_num(v, ".2g") for v in c["p_tost"]], "Holm TOST p": [_num(v, ".2g") for v in c["p_tost_adj"]],
        "Verdict": c["verdict"], "Seeds to decide": ["-" if pd.isna(v) else str(v) for v in c["seeds_needed"]],
        "Failures": [f or "-" for f in c["failures"]],
    })
    return models, comparisons


def method_text(report: Report) -> list[str]:
    """The method section, paragraph by paragraph (plain text)."""
    a, mg = report.alpha, report.margin
    n_test = f"{report.n_test:,} test images" if report.n_test else "the test set"
    se = (f"The binomial standard error of one run's test accuracy is {report.binomial_se:.2f} points "
          f"(sqrt(p (1 - p) / n) at the mean accuracy, n = {report.n_test:,}), beside a seed-to-seed standard "
          f"deviation of {_num(report.spread)} points (root mean variance over the models)."
          if report.n_test else f"The seed-to-seed standard deviation is {_num(report.spread)} points.")
    out = [
        f"The verdicts hold for this test set ({n_test}): seeds vary the initialisation and the batch order, "
        f"never the test images, so a verdict says what the seeds do on these images. {se}",
        "Each comparison a -> b estimates mean(b) - mean(a) of the final test accuracy, in points. Seeds pair by "
        "design (at a seed every model sees the same batch order; A, B and C start from identical weights, C, D "
        "and E share their first layer's), so the test is a paired t-test (scipy ttest_rel) on the seeds both "
        "models have, with the per-seed correlation r shown; Welch's t-test only where fewer than 2 seeds are "
        "shared.",
        f"Families ({'; '.join(f'{k}: {v}' for k, v in FAMILIES.items())}) are decided separately, so adding "
        f"models to one never changes another's verdicts.",
    ]
    if not report.design:
        out.append(
            f"Within a family of m comparisons (those without a test, e.g. a model with one seed, are counted in m "
            f"and never rejected) the verdicts come from two Holm step-down procedures (S. Holm, A simple "
            f"sequentially rejective multiple test procedure, Scand. J. Statist. 6 (1979) 65-70), each at "
            f"family-wise alpha {a:g}: helped or hurt (the sign of the difference) where Holm rejects 'no "
            f"difference' on the two-sided t-test p-values; equivalent where, not helped or hurt, Holm rejects "
            f"'|difference| >= {mg:g}' on the TOST p-values (two one-sided tests, statsmodels ttost_paired / "
            f"ttost_ind; D. J. Schuirmann, J. Pharmacokinet. Biopharm. 15 (1987) 657-680) of all m comparisons; "
            f"undecided otherwise. Holm-adjusted p-values (as statsmodels multipletests, method holm, gives "
            f"them) are in the tables and comparisons.csv: a verdict is reached exactly where its adjusted p "
            f"is <= {a:g}. "
            f"Guarantee: the probability of any false helped/hurt in a family is at most {a:g} (strong control "
            f"of the no-difference hypotheses; a sign error when the true difference is non-zero is not "
            f"covered by Holm's proof for correlated tests in general), and the probability of any false "
            f"equivalent is at most {a:g}; so any wrong verdict in a family has probability at most "
            f"{2 * a:g}. The equivalence family is all m comparisons, not only those left undecided by the "
            f"first procedure, because a family chosen by the data would not keep Holm's guarantee.")
        out.append(
            "The interval shown is the one at the level Holm tested the comparison at (column Level; Interval "
            "of says which test): for the k-th smallest p-value of m, a = alpha / (m - k + 1) while all "
            "smaller ones were rejected, and the first non-rejected step's a for it and every larger p. "
            "helped/hurt: the t-interval at 1 - a, which excludes 0 exactly where Holm rejects; equivalent: the "
            "TOST interval at 1 - 2a (a from the TOST procedure), which lies within +-margin exactly where Holm "
            "rejects (it may exclude 0 without meaning helped: the difference has its own test); undecided: the "
            "wider of the two, which holds 0 and reaches beyond the margin. These intervals decide, they are "
            "not simultaneous confidence intervals: only the first step's level (1 - alpha / m) would cover "
            "all comparisons at once.")
    if report.design:
        looks = ", ".join(map(str, report.design.looks()))
        out.append(f"The seeds were added in rounds until every comparison of the default family was decided "
                   f"(ffnn compare --until-decided; looks at {looks} seeds). Optional stopping is accounted for "
                   f"by {METHOD_NAME}. The verdict is read from the interval shown (RCI): helped if it lies above "
                   f"0, hurt if below 0, equivalent if it lies within +-{mg:g} points, undecided otherwise. Each of "
                   f"a family's m comparisons gets alpha / m (Bonferroni, alpha {a:g}): all m intervals cover "
                   f"their true differences at every look at once with probability >= 1 - {a:g}, so the "
                   f"probability of any wrong verdict in the family (a false helped, hurt or equivalent), whenever "
                   f"one stops, is at most {a:g}. At an analysis of n seeds the interval uses the boundary that "
                   f"the spending function gives after the planned looks before n, carried to the t scale at the "
                   f"same nominal level, so the shown level is above 1 - alpha / m (a wider interval) at the early "
                   f"looks. Holm's step-down is not used in this mode (its group-sequential form recycles alpha "
                   f"between hypotheses and re-tests earlier looks; G. Maurer and F. Bretz, Stat. Biopharm. Res. 5 "
                   f"(2013) 311-320): Bonferroni is the simpler, valid and more conservative choice here, and the "
                   f"fixed-sample Holm p-values are not shown because they ignore the optional stopping. "
                   f"References: C. Jennison and B. W. Turnbull, Interim analyses: the repeated confidence "
                   f"interval approach, JRSS B 51 (1989) 305-361; K. K. G. Lan and D. L. DeMets, Discrete "
                   f"sequential boundaries for clinical trials, Biometrika 70 (1983) 659-663.")
    out.append(f"Seeds to decide (undecided comparisons only): seeds per model at which the nearer decision "
               f"(a difference from 0, or equivalence when the observed difference is within the margin) has "
               f"{report.cfg.power:.0%} power if the truth is the observed difference at the observed spread, at "
               f"the family's alpha / m, the first Holm step's level (statsmodels TTestPower for paired, "
               f"TTestIndPower for Welch), for one fixed-sample analysis.")
    out.append(f"Failures are outcomes: a FAILED run is diverged (its ffnn.failure tag says so) or crashed; a "
               f"FINISHED run at or below {COLLAPSED_AT:g}% (chance plus 5 points) collapsed. They are counted per "
               f"model and left out of the means; a comparison with failed seeds names them in its verdict. "
               f"Model intervals are Student-t {report.cfg.confidence:.0%} intervals of the mean.")
    return out


def _md(text: str) -> str:
    """Markdown-escape the characters model names may hold: ``_md("C*") == "C\\*"``."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``| a | b |`` rows; text columns left-aligned, the rest right-aligned."""
    cells = frame.astype(str).map(_md)
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join(":---" if c in LEFT else "---:" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _bold_verdict(line: str) -> str:
    return re.sub(r"(?<=: )(helped|hurt|equivalent|undecided)\b", r"**\1**", line, count=1)


def markdown(report: Report, plots: list[str]) -> str:
    models, comparisons = display_tables(report)
    answers = [f"- {_bold_verdict(_md(s))}" for s in report.answer_lines()]
    parts = [f"# ffnn report: {', '.join(report.cfg.experiments)}", "",
             "## Answer", "", *(answers or [NO_STEPS]), "",
             f"{report.evidence()}. Accuracy in percent, differences in points. "
             f"Tracking store: `{report.uri}`; generated {_now()}.", "",
             "## Models", "", markdown_table(models), "",
             "## Comparisons", "", f"Verdicts: {_md(report.verdict_header())}.", "",
             markdown_table(comparisons) if len(comparisons) else NO_STEPS, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})\n" for p in plots]
    if report.notes:
        parts += ["## Notes", "", *(f"- {_md(n)}" for n in report.notes), ""]
    parts += ["## Method", "", *(p + "\n" for p in method_text(report))]
    return "\n".join(parts)


def _tex_escape(text: str) -> str:
    return "".join({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}.get(ch, ch)
                   for ch in text)


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table`` environment by pandas' ``Styler.to_latex``; ``->`` becomes an arrow."""
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, column_format="".join("l" if c in LEFT else "r" for c in frame.columns),
                          caption=_tex_escape(caption), label=label, position="ht", position_float="centering")
    return tex.replace("->", r"$\rightarrow$").replace(r"\begin{tabular}", "\\small\n\\begin{tabular}", 1)


def latex(report: Report) -> str:
    models, comparisons = display_tables(report)
    name = ", ".join(report.cfg.experiments)
    parts = [f"% ffnn report: {name}; generated {_now()}. Needs \\usepackage{{booktabs}}.",
             f"% {report.evidence()}", *(f"% {s}" for s in report.answer_lines()), "",
             latex_table(models, f"Final test accuracy (%) per model over seeds ({report.evidence()}); failed and "
                                 f"collapsed seeds are counted, not averaged in.", "tab:ffnn-models"), ""]
    if len(comparisons):
        parts += [latex_table(comparisons, f"Differences in final test accuracy (points). Verdicts: "
                                           f"{report.verdict_header()}.", "tab:ffnn-comparisons"), ""]
    return "\n".join(parts)


def html_page(report: Report, figures: dict[str, bytes]) -> str:
    """One self-contained page: tables and plots (base64 PNG) inline, no external resources."""
    models, comparisons = display_tables(report)
    esc = html.escape
    bold = re.compile(r"(?<=: )(helped|hurt|equivalent|undecided)\b")
    answers = "".join("<li>" + bold.sub(r"<b>\1</b>", esc(s), count=1) + "</li>" for s in report.answer_lines())
    images = "".join(f'<figure><img alt="{esc(PLOTS[n])}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{esc(PLOTS[n])}</figcaption></figure>'
                     for n, png in figures.items())
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    method = "".join(f"<p>{esc(p)}</p>" for p in method_text(report))
    title = f"ffnn report: {', '.join(report.cfg.experiments)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ border-bottom: 2px solid #444; }}
td:nth-child(-n+3), th:nth-child(-n+3) {{ text-align: left; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Answer</h2>{f"<ul>{answers}</ul>" if answers else f"<p>{NO_STEPS}</p>"}
<p>{esc(report.evidence())}. Accuracy in percent, differences in points.
Tracking store: <code>{esc(report.uri)}</code>; generated {esc(_now())}.</p>
<h2>Models</h2>{models.to_html(index=False, border=0)}
<h2>Comparisons</h2><p>Verdicts: {esc(report.verdict_header())}.</p>
{comparisons.to_html(index=False, border=0) if len(comparisons) else f"<p>{NO_STEPS}</p>"}
{"<h2>Plots</h2>" + images if images else ""}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Method</h2>{method}
</body></html>
"""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_files(report: Report, figures: dict[str, bytes]) -> list[Path]:
    """Write the requested formats into ``report.out``; return the paths written."""
    out, fmts = report.out, set(report.cfg.formats)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out: cannot create {out} ({e.strerror})") from None
    files: dict[str, str | bytes] = {}
    if "csv" in fmts:
        files["summary.csv"] = report.summary.to_csv(index=False)
        files["comparisons.csv"] = report.comparisons.to_csv(index=False)
    plots = list(figures) if "png" in fmts else []
    if "md" in fmts:
        files["summary.md"] = markdown(report, plots)
    if "tex" in fmts:
        files["summary.tex"] = latex(report)
    if "html" in fmts:
        files["summary.html"] = html_page(report, figures)
    for name in plots:
        files[name] = figures[name]
    paths = []
    for name, content in files.items():
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths
