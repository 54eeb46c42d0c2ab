"""Training: TrainState, the pmapped train step and loop (`train`), the optimizer (`optim`), the
frozen teacher (`teacher`) and the teacher -> students pipeline (`pipeline`)."""
