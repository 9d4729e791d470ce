"""Make the tiny stage-2 configs (`diffusion_configs.py`) importable (pytest runs in importlib mode)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
