"""`ffnn report`: which capacity steps helped, hurt, made no difference, or are undecided.

stats.py (pure statistics), sequential.py (the --until-decided stopping rule), runs.py (MLflow's
frame -> runs and outcomes), plan.py (families of comparisons), build.py (verdicts, the Report),
plots.py, export.py.
"""

from .build import FORMATS, Report, ReportConfig, analyse, build_report_config, compare_steps, make_report
from .plan import Step, plan
from .runs import ModelInfo, ReportError, Selection, select_runs, tidy_runs
from .sequential import Design

__all__ = ["FORMATS", "Design", "ModelInfo", "Report", "ReportConfig", "ReportError", "Selection", "Step",
           "analyse", "build_report_config", "compare_steps", "make_report", "plan", "select_runs", "tidy_runs"]
