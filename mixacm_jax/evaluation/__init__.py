"""Robustness evaluation: the report (`robustness`), its files (`robustness_output`) and
`--mode=eval` on a checkpoint (`checkpoint_report`)."""
