"""Reliability tests: faults and hostile inputs. Puts the trainer and diffusion test helpers on sys.path."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
for path in (HERE, os.path.join(TESTS, "trainer"), os.path.join(TESTS, "models", "diffusion"), os.path.dirname(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)
