"""The run harness: what every objective's training loop needs that is not the algorithm.

    Run          run.py      one training run: torchrun ranks, threads, seeds, the folder, resume, the step loop's
                             cadence, the optimizer step, the end of the run
    RunConfig    config.py   the fields every objective's Config shares; main(): flags -> Config -> train(cfg)
    folder.py                a run's folder: its lock, inputs.json, previous/, state.pt, what Ctrl-C says
    metrics.py               metrics.jsonl: MetricsLogger, read_metrics, check_finite
"""
from minipost.harness.config import RunConfig, logprobs_impl_field, main
from minipost.harness.folder import (INPUT_FIELDS, RESUME_IGNORES, check_not_a_run, check_not_held, check_previous,
                                     config_changes, file_digest, hold_folder, input_digests, release_folder,
                                     save_state, start_run, where_to_continue)
from minipost.harness.metrics import MetricsLogger, check_finite, read_metrics
from minipost.harness.run import Run

__all__ = ["Run", "RunConfig", "logprobs_impl_field", "main", "INPUT_FIELDS", "RESUME_IGNORES", "check_not_a_run",
           "check_not_held", "config_changes", "check_previous", "file_digest", "hold_folder", "input_digests",
           "release_folder", "save_state", "start_run", "where_to_continue", "MetricsLogger", "check_finite",
           "read_metrics"]
