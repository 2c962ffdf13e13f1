"""osd_lab: speculative decoding, from scratch to an online speculative decoder."""
