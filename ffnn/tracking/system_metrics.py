"""MLflow's system-metrics sampler on one run."""

from __future__ import annotations

import logging


class SystemMetrics:
    """MLflow's own ``SystemMetricsMonitor`` on one run: a thread samples CPU, memory, disk, network and
    (with nvidia-ml-py and an NVIDIA GPU) GPU use every ``interval`` seconds and logs their mean over
    ``samples`` samples as ``system/*`` metrics, through its own client, as the run's only other writer.

    ``stop`` (or leaving the ``with`` block) ends the thread and logs the samples taken since the last
    point, so a short run gets at least one.
    """

    def __init__(self, uri: str, run_id: str, interval: float = 2.0, samples: int = 5):
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
        if monitor is None:
            return
        monitor.finish()  # sets the thread's stop event and joins it
        leftover = {k: v for k, v in monitor.aggregate_metrics().items() if v == v}
        if leftover:
            monitor.publish_metrics(leftover)
            monitor.mlflow_logger.flush()

    def __enter__(self) -> SystemMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


