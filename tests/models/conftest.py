"""Make the shared tiny configs (`ae_configs.py`) importable from these tests (pytest runs with importlib mode)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
