import os
import sys

import torch

# The package lives in models/; tests run from the repository root or from models/.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
torch.set_num_threads(1)

MODELS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
