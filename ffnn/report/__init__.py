"""`ffnn report`: which capacity steps helped, hurt, made no difference, or are undecided.

stats.py (pure statistics: tests, Holm, the five verdicts, power), sequential.py (anytime-valid
confidence sequences: --until-decided and grown experiments), scope.py (the new-images standard error),
runs.py (MLflow's frame -> runs and outcomes), plan.py (families of comparisons), verdicts.py (both
scopes' verdicts of every family), studies.py (the searches behind tuned models: budgets, convergence,
the two readings of a tuned comparison), looks.py (the looks reports took), build.py (the Report),
plots.py, export.py: all pure. io.py alone reads and writes the store.
"""

from .build import FORMATS, Analysis, Report, ReportConfig, analyse, build_report_config
from .io import make_report
from .plan import Step, plan
from .runs import ModelInfo, ReportError, Selection, select_runs, tidy_runs
from .sequential import Design
from .verdicts import compare_steps

__all__ = ["FORMATS", "Analysis", "Design", "ModelInfo", "Report", "ReportConfig", "ReportError", "Selection", "Step",
           "analyse", "build_report_config", "compare_steps", "make_report", "plan", "select_runs", "tidy_runs"]
