"""Training: the loop (`train`, `resume`), the run it builds, its budget planner, optimizer, schedule, loss and
multi-process runs. It stands on the data and run layers; nothing outside the CLI and the benchmark imports it."""
