"""Evaluation: the shapes checker (`ldm.eval.shapes`) and reconstruction / sample metrics."""
