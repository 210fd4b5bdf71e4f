"""Downstream evaluation: CORE-style centered accuracy on early-signal tasks, bits per byte, the bundle digest."""
