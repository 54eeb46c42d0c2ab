"""What every part runs on: devices (`parallel`), hosts (`distributed`), checkpoints
(`checkpoint`), progress lines and metrics (`reporting`)."""
