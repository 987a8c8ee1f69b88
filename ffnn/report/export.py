"""The report's files: csv, markdown, LaTeX (pandas Styler, booktabs), one self-contained HTML page, PNGs."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ..files import write_all
from .build import Report, ReportError
from .plan import FAMILIES
from .plots import PLOTS
from .runs import COLLAPSED_AT
from .sequential import METHOD_NAME
from .spending import METHOD_NAME as SPENDING_NAME
from .stats import MIN_SEEDS
from .studies import TOP

NO_STEPS = "No capacity steps among the models present."
FOREST = "comparisons.png"
CAPACITY = "capacity_map.png"
LEFT = {"Model", "Spec", "Device", "Family", "Comparison", "Change", "Pairing", "Verdict", "New-images verdict",
        "Failures", "Search", "Converged"}


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
    if "study" in s.columns:  # tuned models present: the search behind each
        models = models.assign(**search_cells(s))
    c = report.comparisons
    comparisons = pd.DataFrame({
        "Family": c["family"], "Comparison": [f"{a} -> {b}" for a, b in zip(c["a"], c["b"])], "Change": c["change"],
        "Pairing": [f"paired, n={r.n_a}" if r.paired else f"Welch, {r.n_a} vs {r.n_b}"
                    + (" studies" if r.reading == "architecture" else "") for r in c.itertuples()],
        "r": [_num(v) for v in c["corr"]],
        "Diff (pts)": [f"{v:+.2f}" if not pd.isna(v) else "-" for v in c["diff"]],
        "Deciding interval": ["-" if pd.isna(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}]" for r in c.itertuples()],
        "Interval of": [{"difference": "t-test", "equivalence": "TOST", "sequence": "CS", "repeated": "RCI",
                         "repeated-equivalence": "RCI TOST"}.get(v, "-")
                        for v in c["interval"]],
        "Level": [_num(v, ".2%") for v in c["level"]],
        "p": [_num(v, ".2g") for v in c["p"]], "Holm p": [_num(v, ".2g") for v in c["p_adj"]],
        "TOST p": [_num(v, ".2g") for v in c["p_tost"]], "Holm TOST p": [_num(v, ".2g") for v in c["p_tost_adj"]],
        "Verdict": c["verdict"],
        "New images": ["-" if pd.isna(r.pop_low) else f"[{r.pop_low:+.2f}, {r.pop_high:+.2f}]" for r in c.itertuples()],
        "New-images verdict": c["pop_verdict"],
        "Fisher p (failures)": [_num(v, ".2g") for v in c["p_fail"]],
        "Seeds to decide": ["-" if pd.isna(r.seeds_needed) else str(r.seeds_needed) + (
            "" if pd.isna(r.seeds_low) or pd.isna(r.seeds_high) else f" ({r.seeds_low}-{r.seeds_high})")
            for r in c.itertuples()],
        "Failures": [f or "-" for f in c["failures"]],
    })
    if (c["reading"] != "").any():
        comparisons.insert(3, "Studies", ["-" if pd.isna(n) else str(n) for n in c["n_studies"]])
    return models, comparisons


def search_cells(s: pd.DataFrame) -> dict[str, list[str]]:
    """The models table's study columns: ``2 of 3``, ``6 trials (1 pruned), 1.2 min, best 4th``, ``yes``."""
    def search(r: pd.Series) -> str:
        if pd.isna(r["trials"]):
            return "-"
        best = "" if pd.isna(r["best_at"]) else f", best {r['best_at']} of {r['trials']}"
        return f"{r['trials']} trials ({r['pruned']} pruned), {r['search_seconds'] / 60:.1f} min{best}"
    return {"Study": ["-" if pd.isna(k) else f"{k} of {n}" for k, n in zip(s["study"], s["n_studies"])],
            "Search": [search(r) for _, r in s.iterrows()],
            "Converged": ["-" if pd.isna(ok) else "yes" if ok else f"maybe not: {why}"
                          for ok, why in zip(s["converged"], s["convergence"])]}


def method_text(report: Report) -> list[str]:
    """The method section, paragraph by paragraph (plain text)."""
    a, mg = report.alpha, report.margin
    rules = set(report.comparisons["rule"]) if len(report.comparisons) else {"holm"}
    n_test = f"{report.n_test:,} test images" if report.n_test else "the test set"
    se = (f"The binomial standard error of one run's test accuracy is {report.binomial_se:.2f} points "
          f"(sqrt(p (1 - p) / n) at the mean accuracy, n = {report.n_test:,}), beside a seed-to-seed standard "
          f"deviation of {_num(report.spread)} points (root mean variance over the models)."
          if report.n_test else f"The seed-to-seed standard deviation is {_num(report.spread)} points.")
    out = [
        f"Two scopes. This test set ({n_test}): seeds vary the initialisation and the batch order, never the test "
        f"images, so the deciding interval says what the seeds do on these images; --until-decided decides at "
        f"this scope. New images: the same rule on a standard error that adds the test set's own sampling error, "
        f"from each run's per-image record (which test images its final network got right) and the two-way "
        f"crossed random-effects decomposition seeds x images, Var = (MS_seed + MS_image - MS_resid) / (n N) "
        f"(S. R. Searle, G. Casella and C. E. McCulloch, Variance Components, Wiley 1992; X. Bouthillier et al., "
        f"Accounting for variance in machine learning benchmarks, MLSys 2021), with the seeds' n - 1 degrees "
        f"of freedom (conservative: Welch-Satterthwaite's would be larger, and could make the wider error's "
        f"interval the narrower one). Where the scopes disagree the answer says so; "
        f"where the test-image term alone would keep a "
        f"comparison undecided at any number of seeds it says more seeds will not decide it. Runs logged without "
        f"per-image records have no new-images scope (unavailable). {se}",
        f"Each comparison a -> b estimates mean(b) - mean(a) of the final test accuracy, in points. Seeds pair by "
        f"design (at a seed every model sees the same batch order; A, B and C start from identical weights, C, D "
        f"and E share their first layer's), so the test is a paired t-test (scipy ttest_rel) on the seeds both "
        f"models have, with the per-seed correlation r shown; Welch's t-test only where fewer than 2 seeds are "
        f"shared. No verdict is given below {MIN_SEEDS} seeds per model: at 2 seeds tied per-seed differences "
        f"(accuracies move in 0.01-point steps) gave false verdicts in 7-30 % of simulated null families. Where "
        f"the per-seed differences tie exactly (zero spread) the t statistic is infinite, so the p-values are "
        f"the exact sign-flip (permutation) test's instead (2 / 2^n two-sided, 1 / 2^n per one-sided TOST test; "
        f"scipy permutation_test gives the same), never 0; elsewhere the t-test, which held alpha from 3 seeds "
        f"on in simulation.",
        f"Five verdicts: helped or hurt (a difference from 0 is shown, and it is not shown to lie within "
        f"+-{mg:g} points), negligible (shown different from 0 and shown within +-{mg:g}: real, but smaller than "
        f"what counts), equivalent (shown within +-{mg:g}), undecided (neither). A difference shown to lie within "
        f"the margin is never reported as helped or hurt.",
        f"Failures are outcomes. A FAILED run is diverged (its ffnn.failure tag says so) or crashed, and scores "
        f"chance accuracy (100 / classes) in the comparisons, a failed seed's per-image record chance on every "
        f"image; a FINISHED run at or below chance plus 5 points ({COLLAPSED_AT:g}% with 10 classes) collapsed, "
        f"and keeps its measured accuracy. So failures enter the means and the tests of the comparisons (the "
        f"model table's means are over the runs that trained). Each comparison also shows Fisher's exact test "
        f"of the two failure rates (scipy fisher_exact); a side whose failure rate is higher at p < {a:g} (unadjusted, "
        f"which only makes this guard stricter) is never the one that helped: such a comparison is undecided.",
        f"Families ({'; '.join(f'{k}: {v}' for k, v in FAMILIES.items())}) are decided separately, so adding "
        f"models to one never changes another's verdicts.",
    ]
    if "holm" in rules:
        out.append(
            f"One fixed-sample look (the first report of these seeds): within a family of m comparisons (those "
            f"without a test counted in m, never rejected) two Holm step-down procedures (S. Holm, Scand. J. "
            f"Statist. 6 (1979) 65-70), each at family-wise alpha {a:g}: one rejects 'no difference' on the "
            f"two-sided p-values, the other '|difference| >= {mg:g}' on the TOST p-values (two one-sided tests, "
            f"D. J. Schuirmann, J. Pharmacokinet. Biopharm. 15 (1987) 657-680) of all m comparisons. Both "
            f"rejected: negligible; the first only: helped or hurt; the second only: equivalent. Holm-adjusted "
            f"p-values are in the tables and comparisons.csv. The interval shown is the one at the level Holm "
            f"tested the comparison at (column Level): for helped/hurt the t-interval at 1 - a (it excludes 0 "
            f"exactly where Holm rejects), for equivalent and negligible the TOST interval at 1 - 2a (within "
            f"+-margin exactly where Holm rejects), for undecided the wider of the two. Guarantee, for this one "
            f"look: any false claim of a difference (helped, hurt or negligible) in a family has probability at "
            f"most {a:g}, and any false equivalent or negligible at most {a:g}. It holds for one look only: a "
            f"report on the same experiment after it grew says so and switches to the anytime-valid rule.")
    if "spending" in rules:
        looks = ", ".join(map(str, report.design.looks())) if report.design else ""
        out.append(
            f"--until-decided (looks at {looks} seeds; after each look only the models of still-undecided "
            f"comparisons get new seeds, and a comparison keeps the verdict of the look that decided it): "
            f"{SPENDING_NAME}. At a look each comparison's interval is diff +- c se, c the two-sided boundary "
            f"that spends alpha as alpha t^2 by t = seeds / max seeds (K. Kim and D. L. DeMets, Biometrika 74 "
            f"(1987) 149-154; Armitage, McPherson and Rowe's recursive integration), carried to the t scale at "
            f"the same nominal level (C. Jennison and B. W. Turnbull, Group Sequential Methods, 2000, 11.3), "
            f"none below {MIN_SEEDS} seeds. Across the family two Holm procedures, one on 'no difference', one on "
            f"'|difference| >= {mg:g}' (TOST: the interval at 1 - 2a within the margin), in their "
            f"group-sequential form (W. Maurer and F. Bretz, Stat. Biopharm. Res. 5 (2013) 311-320): each open "
            f"hypothesis at alpha / r, r those still open; a rejection passes its alpha on and the others are "
            f"tested again at every look so far. Guarantee, however the rounds end: any false claim of a "
            f"difference (helped, hurt, negligible) in a family has probability at most {a:g}, and any false "
            f"equivalent or negligible at most {a:g}. The interval shown is the one at the look that decided, "
            f"at the level its procedure reached (C. Jennison and B. W. Turnbull, Interim analyses: the "
            f"repeated confidence interval approach, JRSS B 51 (1989) 305-361).")
    if "anytime" in rules:
        out.append(
            f"Grown since an earlier report: {METHOD_NAME}. Each comparison's interval at n seeds is diff +- "
            f"t*_n se, the differences that the mixture Bayes factor of the t-test (normal prior on the "
            f"standardized effect, unit variance; M. Goenen et al., Am. Stat. 59 (2005) 252-257) does not reject "
            f"at 1 / (alpha / m). That Bayes factor is a nonnegative martingale under its hypothesis (A. "
            f"Perez-Ortiz, T. Lardy, R. de Heide and P. Gruenwald, E-statistics, group invariance and "
            f"anytime-valid testing, Ann. Statist. 2024), so by Ville's inequality all m intervals cover their "
            f"true differences at every n at once with probability >= 1 - {a:g}: a verdict read at any look, "
            f"chosen in advance or not, errs with probability at most {a:g} for the whole family. It needs "
            f"{MIN_SEEDS} seeds and a non-zero spread, and is wider than a one-look interval (T. L. Lai, On "
            f"confidence sequences, Ann. Statist. 4 (1976) 265-280; H. Wang and A. Ramdas, Anytime-valid "
            f"t-tests and confidence sequences for Gaussian means with unknown variance, 2023).")
    if len(report.comparisons) and (report.comparisons["reading"] != "").any():
        out.append(
            f"Tuned comparisons (family tuned) have two readings. From one study per architecture (ffnn tune, "
            f"--studies 1) a comparison tests seeds of the two configurations that search happened to find: a "
            f"fact about those configurations, not about the architectures, since which configuration a search "
            f"finds varies from search to search (X. Bouthillier et al., Accounting for variance in machine "
            f"learning benchmarks, MLSys 2021, count hyperparameter optimisation among the sources a benchmark "
            f"must vary). From K >= 2 independent studies per architecture (--studies K, each with its own sampler "
            f"seed) it is a two-level design, studies and seeds within studies: each study's mean over its seeds "
            f"is one observation and the architectures are compared by Welch's t-test (and TOST) on the study "
            f"means, unpaired, since the searches of two architectures are independent. With equal K and seeds "
            f"that t statistic is the exact test of the between-architecture effect in the nested ANOVA, F = "
            f"MS_architecture / MS_studies(architecture) (D. C. Montgomery, Design and Analysis of Experiments, "
            f"nested designs); a test on the pooled seeds would ignore the search-to-search spread and, in "
            f"simulation, calls differences that are not there far more often than alpha. Holm across the family "
            f"as above. Each study shows its budget (trials, pruned, wall time), when its best trial came and "
            f"whether its best {TOP} trials agree: it may not have converged when the best came in the last "
            f"fifth of its trials or the top {TOP} spread wider than the margin ({mg:g} points of validation "
            f"accuracy). Architectures compared must have had equal budgets (trials, seeds per trial, steps), "
            f"or the comparison says they did not.")
    out.append(f"Seeds to decide (undecided comparisons only): seeds per model at which the nearer decision "
               f"(a difference from 0, or equivalence when the observed difference is within the margin) has "
               f"{report.cfg.power:.0%} power if the truth is the observed difference, at the family's alpha / m, "
               f"for one fixed-sample look: the t-test's power from statsmodels TTestPower (TTestIndPower for "
               f"Welch), TOST's with both one-sided tests (the noncentral-t method of PowerTOST). The range comes "
               f"from the {report.cfg.confidence:.0%} chi-square interval of the spread. Adding seeds and reporting "
               f"again is a second look: `ffnn compare --until-decided` does it with the sequential rule. Model "
               f"intervals are Student-t {report.cfg.confidence:.0%} intervals of the mean.")
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
    return re.sub(r"(?<=: )(helped|hurt|negligible|equivalent|undecided)\b", r"**\1**", line, count=1)


def markdown(report: Report, plots: list[str]) -> str:
    models, comparisons = display_tables(report)
    answers = [f"- {_bold_verdict(_md(s))}" for s in report.answer_lines()]
    parts = [f"# ffnn report: {', '.join(report.cfg.experiments)}", "",
             "## Answer", "", *(answers or [NO_STEPS]), "",
             f"{report.evidence()}. Accuracy in percent, differences in points. "
             f"Tracking store: `{report.uri}`; generated {_now()}.", "",
             *([f"![{PLOTS[FOREST]}]({FOREST})", ""] if FOREST in plots else []),  # the picture of the answer
             *(capacity_markdown(report, CAPACITY in plots)),
             "## Models", "", markdown_table(models), "",
             "## Comparisons", "", f"Verdicts: {_md(report.verdict_header())}.", "",
             markdown_table(comparisons) if len(comparisons) else NO_STEPS, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})\n" for p in plots if p not in (FOREST, CAPACITY)]
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


def latex(report: Report, plots: Sequence[str] = ()) -> str:
    models, comparisons = display_tables(report)
    name = ", ".join(report.cfg.experiments)
    parts = [f"% ffnn report: {name}; generated {_now()}. Needs \\usepackage{{booktabs}} and {{graphicx}}.",
             f"% {report.evidence()}", *(f"% {s}" for s in report.answer_lines()), "",
             latex_table(models, f"Final test accuracy (%) per model over seeds ({report.evidence()}); failed and "
                                 f"collapsed seeds are counted, not averaged in.", "tab:ffnn-models"), ""]
    if len(comparisons):
        parts += [latex_table(comparisons, f"Differences in final test accuracy (points). Verdicts: "
                                           f"{report.verdict_header()}.", "tab:ffnn-comparisons"), ""]
    if CAPACITY in plots:
        parts += ["\\begin{figure}[ht]", "\\centering", f"\\includegraphics[width=\\linewidth]{{{CAPACITY}}}",
                  f"\\caption{{{_tex_escape(PLOTS[CAPACITY])}.}}", "\\label{fig:ffnn-capacity}", "\\end{figure}", ""]
    if "comparisons.png" in plots:  # the forest plot, beside the .tex as the PNGs are written
        parts += ["\\begin{figure}[ht]", "\\centering", "\\includegraphics[width=\\linewidth]{comparisons.png}",
                  f"\\caption{{{_tex_escape(PLOTS['comparisons.png'])}.}}", "\\label{fig:ffnn-comparisons}",
                  "\\end{figure}", ""]
    return "\n".join(parts)


FIT_NOTE = ("Its frontiers, budget interaction and scaling fits are in the answer above. The fits: err(N) = E + "
            "A N^-alpha per depth over parameter count N, robust loss in log space, intervals from a bootstrap over "
            "seeds; the hold-out is the widest width, predicted by the fit without it.")


def _capacity_tables(report: Report) -> list[tuple[str, pd.DataFrame]]:
    c = report.capacity
    if c is None:
        return []
    return [("Scaling fits", c.scaling_display())] + ([("Budget interaction (interaction.csv)", c.interaction.round(3))]
                                                       if len(c.interaction) else [])


def capacity_markdown(report: Report, with_map: bool) -> list[str]:
    """The grid's section: the map and the tables of its fits and budget interaction."""
    if report.capacity is None:
        return []
    return ["## Capacity map", "", *([f"![{PLOTS[CAPACITY]}]({CAPACITY})", ""] if with_map else []), FIT_NOTE, "",
            *(x for title, t in _capacity_tables(report) for x in (f"{title}:", "", markdown_table(t), ""))]


def capacity_html(report: Report, figure: str) -> str:
    if report.capacity is None:
        return ""
    tables = "".join(f"<p>{html.escape(title)}:</p><div class=\"wide\">{t.to_html(index=False, border=0)}</div>"
                     for title, t in _capacity_tables(report))
    return f"<h2>Capacity map</h2>{figure}<p>{html.escape(FIT_NOTE)}</p>{tables}"


def html_page(report: Report, figures: dict[str, bytes]) -> str:
    """One self-contained page: tables and plots (base64 PNG) inline, no external resources."""
    models, comparisons = display_tables(report)
    esc = html.escape
    bold = re.compile(r"(?<=: )(helped|hurt|negligible|equivalent|undecided)\b")
    answers = "".join("<li>" + bold.sub(r"<b>\1</b>", esc(s), count=1) + "</li>" for s in report.answer_lines())
    figure = {n: f'<figure><img alt="{esc(PLOTS[n])}" src="data:image/png;base64,'
                 f'{base64.b64encode(png).decode()}"><figcaption>{esc(PLOTS[n])}</figcaption></figure>'
              for n, png in figures.items()}
    forest = figure.pop(FOREST, "")  # the picture of the answer, right under it
    forest += capacity_html(report, figure.pop(CAPACITY, ""))
    images = "".join(figure.values())
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
.wide {{ overflow-x: auto; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Answer</h2>{f"<ul>{answers}</ul>" if answers else f"<p>{NO_STEPS}</p>"}
<p>{esc(report.evidence())}. Accuracy in percent, differences in points.
Tracking store: <code>{esc(report.uri)}</code>; generated {esc(_now())}.</p>
{forest}
<h2>Models</h2><div class="wide">{models.to_html(index=False, border=0)}</div>
<h2>Comparisons</h2><p>Verdicts: {esc(report.verdict_header())}.</p>
{f'<div class="wide">{comparisons.to_html(index=False, border=0)}</div>' if len(comparisons) else f"<p>{NO_STEPS}</p>"}
{"<h2>Plots</h2>" + images if images else ""}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Method</h2>{method}
</body></html>
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_files(report: Report, figures: dict[str, bytes]) -> list[Path]:
    """Write the requested formats into ``report.out``; return the paths written."""
    out, fmts = report.out, set(report.cfg.formats)
    files: dict[str, str | bytes] = {}
    if "csv" in fmts:
        files["summary.csv"] = report.summary.to_csv(index=False)
        files["comparisons.csv"] = report.comparisons.to_csv(index=False)
        files.update(report.capacity.csv_files() if report.capacity else {})
    plots = list(figures) if "png" in fmts else []
    if "md" in fmts:
        files["summary.md"] = markdown(report, plots)
    if "tex" in fmts:
        files["summary.tex"] = latex(report, plots)
    if "html" in fmts:
        files["summary.html"] = html_page(report, figures)
    for name in plots:
        files[name] = figures[name]
    return write_all(out, files, "report", ReportError)
