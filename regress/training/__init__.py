"""What `python -m regress.fit` is made of: its arguments, the run folder, resuming, the callbacks it always adds
and the LightningCLI that puts them together; `regress/fit.py` is the thin command on top."""
