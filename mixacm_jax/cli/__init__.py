"""The command line: `mixacm` (or `python run.py`): flags (`main`), what each mode does
(`modes`), and bad config files or keys turned into one line (`config_errors`)."""
