"""Pure document filters: each scores a batch of texts and decides what to keep."""
