"""Jitted adversarial attacks. Each is a pure function of (logits_fn, x, y, key, ...) -> x_adv."""
