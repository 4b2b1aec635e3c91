import torch

# onnxquant_models is imported as an installed package (`dotnet cake --target=setup-python` installs models/ in
# editable mode), so the suite runs from any directory.
torch.set_num_threads(1)
