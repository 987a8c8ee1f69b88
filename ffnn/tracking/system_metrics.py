"""MLflow's system-metrics sampler on one run."""

from __future__ import annotations

import logging


class SystemMetrics:
    """MLflow's own ``SystemMetricsMonitor`` on one run, started and finished as ``mlflow.start_run(
    log_system_metrics=True)`` does: a thread samples CPU, memory, disk, network and (with nvidia-ml-py and an
    NVIDIA GPU) GPU use every ``interval`` seconds and logs the mean of each ``samples`` samples as ``system/*``
    metrics, through its own client, as the run's only other writer.

    One sample a second, each logged: a comparison of a few seconds still gets its points (the monitor logs
    nothing of a batch it has not completed).
    """

    def __init__(self, uri: str, run_id: str, interval: float = 1.0, samples: int = 1):
        self.monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=samples,
                                                tracking_uri=uri)
        except ImportError as e:  # psutil is missing
            logging.getLogger(__name__).warning(f"no system metrics: {e}")
            return
        self.monitor.start()

    def stop(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.finish()  # sets the thread's stop event, joins it and flushes what it queued

    def __enter__(self) -> SystemMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
